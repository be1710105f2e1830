"""A reduced reproduction for the fine-tuning and add-language demonstrations when the full preset cannot be built.

Every emoji and the same 207 held-out ones, but a narrower teacher and student (width 64, 2 layers, 32 px) and fewer
steps: about a tenth of the full preset's compute. Its absolute scores are lower than the full preset's; the
demonstrations compare methods on one start model, which any size allows.
"""

from .run import PRESETS, Preset
from .teacher_clip import TeacherSize

DEMONSTRATION_PRESET = Preset(
    teacher=TeacherSize(width=64, layers=2, image_size=32, projection_dim=64, steps=400, batch_size=64),
    student_width=64,
    student_layers=2,
    sentences_per_class=1,
    stage1_steps=600,
    stage1_batch_size=64,
    stage2_steps=200,
    stage2_batch_size=64,
)


def preset_named(name: str) -> Preset:
    """`altclip-reproduce`'s presets plus ``reduced`` (`DEMONSTRATION_PRESET`)."""
    return DEMONSTRATION_PRESET if name == "reduced" else PRESETS[name]


PRESET_NAMES = ("reduced", *sorted(PRESETS))
