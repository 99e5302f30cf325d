"""Checks that need no model or dataset knowledge."""

from __future__ import annotations

from ..errors import CheckFailed
from ..registry import check


@check("same_sha256", "1", refs=("as",),
       params_schema={"type": "object", "additionalProperties": False, "required": ["as"],
                      "properties": {"as": {"type": "string"}, "sha256": {"type": "string"}}})
def same_sha256(path, params, ctx):
    """The artifact has the same bytes as another artifact (e.g. the shared tokenizer)."""
    mine = ctx.sha256(ctx.artifact)
    other = ctx.sha256(params["as"])
    if other is None:
        raise CheckFailed(f"{params['as']} is missing, so the shared sha256 cannot be compared")
    if mine != other:
        raise CheckFailed(f"sha256 {mine} differs from {params['as']} ({other})")
    want = params.get("sha256")
    if want and mine != want:
        raise CheckFailed(f"sha256 {mine} is not the expected shared {want}")
    return f"same bytes as {params['as']}"
