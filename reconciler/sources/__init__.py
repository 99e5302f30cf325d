"""Where fetched bytes come from. `hf` is the Hugging Face source the engine's apply uses."""
