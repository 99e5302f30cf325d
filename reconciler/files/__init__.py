"""Plug-ins that treat artifacts as bytes: `transforms` (copy, write_json, sha256sums) and
`checks` (same_sha256). Importing this package imports nothing."""
