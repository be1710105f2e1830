"""Training AltCLIP in two stages (teacher learning, contrastive learning) on the Hugging Face Trainer.

Imports the model package, never the reverse: ``modeling_altclip`` stays free of training code.
"""
