"""The models domain: checkpoint conversion, micro models, configs, and the checks on weights.

Transforms: `convert` (Meta .pth and HF shards -> safetensors), `micro` (miniature models),
`model_configs` (adapters, tokenizer/HF configs, metadata). Checks: `tensor_checks` (dtype,
tensor names and shapes), `model_checks` (config consistency, strict loading). Shared rules:
`checkpoint_layout` (Meta/HF keys and shapes), `safetensors_io` (strict reader, streaming
writer), `nets` (pure-PyTorch Meta MTP / HF Llama, imported only to build a model).
Importing this package imports nothing: `registry.PLUGIN_MODULES` names the plug-in modules.
"""
