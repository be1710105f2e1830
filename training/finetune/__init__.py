"""Fine-tuning without forgetting: LoRA adapters (peft), WiSE-FT weight interpolation and before/after scores."""
