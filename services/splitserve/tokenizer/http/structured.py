"""Structured output fields (OpenAI's response_format, vLLM's guided_*) → one Constraint, named by its field."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from splitserve.link.types import Constraint
from splitserve.link.types import ConstraintKind as K
from splitserve.tokenizer.http import schema
from splitserve.tokenizer.http.errors import InvalidField

FORCED_CALL_FIELD = "tool_choice"


class NamedConstraint(NamedTuple):
    """A request's constraint and the field that asked for it (what a refusal names)."""

    field: str
    constraint: Constraint


def request_constraint(req: schema.SamplingFields, forced_call: Constraint | None) -> NamedConstraint | None:
    """The one constraint a request asks for: a guide, or the one a forced tool call brings."""
    guides = _guides(req)
    if len(guides) > 1:
        names = ", ".join(g.field for g in guides)
        raise InvalidField(guides[1].field, f"{names}: at most one of response_format and the guided_* fields "
                                            "per request")
    if guides and forced_call is not None:
        raise InvalidField(guides[0].field, f"{guides[0].field} and a forced tool call (tool_choice required or a "
                                            "named function) cannot both be given: the call's schema is the "
                                            "constraint")
    if guides:
        return guides[0]
    return None if forced_call is None else NamedConstraint(FORCED_CALL_FIELD, forced_call)


def _guides(req: schema.SamplingFields) -> list[NamedConstraint]:
    out = []
    if req.response_format is not None and req.response_format.type != "text":
        out.append(NamedConstraint("response_format", _format(req.response_format)))
    if req.guided_json is not None:
        out.append(NamedConstraint("guided_json", Constraint(K.JSON_SCHEMA, _schema_text(req.guided_json))))
    if req.guided_regex is not None:
        out.append(NamedConstraint("guided_regex", Constraint(K.REGEX, req.guided_regex)))
    if req.guided_choice is not None:
        out.append(NamedConstraint("guided_choice", Constraint(K.CHOICE, choices=tuple(req.guided_choice))))
    if req.guided_grammar is not None:
        out.append(NamedConstraint("guided_grammar", Constraint(K.GRAMMAR, req.guided_grammar)))
    return out


def _format(fmt: schema.ResponseFormat) -> Constraint:
    if fmt.type == "json_object":
        return Constraint(K.JSON_OBJECT)
    if fmt.json_schema is None or fmt.json_schema.json_schema is None:
        raise InvalidField("response_format.json_schema", "response_format json_schema needs "
                                                          "json_schema.schema, a JSON Schema object")
    return Constraint(K.JSON_SCHEMA, json.dumps(fmt.json_schema.json_schema))


def _schema_text(value: dict[str, Any] | str) -> str:
    if isinstance(value, dict):
        return json.dumps(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise InvalidField("guided_json", f"guided_json is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise InvalidField("guided_json", "guided_json must be a JSON Schema object")
    return value
