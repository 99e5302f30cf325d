"""The datasets domain: Alpaca conversion (`transforms`, `alpaca_convert`, `alpaca_io`), stats and
samples (`alpaca_stats`, `alpaca_sample`) and the row checks (`checks`) that read rows the same way.
Importing this package imports nothing: `registry.PLUGIN_MODULES` names the plug-in modules.
"""
