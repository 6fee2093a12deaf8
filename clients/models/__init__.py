"""Models: the factory (encoders, decoders, LoRA via PEFT), heads, the causal-LM answer loss, cached frozen layers."""
