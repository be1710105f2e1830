"""--config files: a relative DeepSpeed path is read beside the config file, so shipped configs work from any folder."""

import os

from altclip.common.config_files import config_file_to_flags


def test_deepspeed_path_is_read_beside_the_config_file(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "zero2.json").write_text("{}")
    (configs / "run.yaml").write_text("deepspeed: configs/zero2.json\nlearning_rate: 0.1\n")
    (configs / "bare.yaml").write_text("deepspeed: zero2.json\n")
    (configs / "missing.yaml").write_text("deepspeed: other.json\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = os.getcwd()
    os.chdir(elsewhere)
    try:
        assert config_file_to_flags(str(configs / "run.yaml")) == [
            "--deepspeed",
            str(configs / "zero2.json"),
            "--learning_rate",
            "0.1",
        ]
        assert config_file_to_flags(str(configs / "bare.yaml")) == ["--deepspeed", str(configs / "zero2.json")]
        # not beside the config: left as written (read from the current folder; DeepSpeed names it if missing)
        assert config_file_to_flags(str(configs / "missing.yaml")) == ["--deepspeed", "other.json"]
    finally:
        os.chdir(before)
