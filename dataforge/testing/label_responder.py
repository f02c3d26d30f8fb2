"""A loopback-server responder that answers constraint-extraction requests from a labelled set, as a
perfect model would: it proves the extraction plumbing (prompt, JSON schema, structured output, merge)
end to end over real HTTP. It is as strict as a server that enforces `response_format`: a request
without a JSON schema, or a schema that does not admit the labelled answer, is refused with HTTP 400."""

from __future__ import annotations

import json
import re
from typing import Any

from .loopback import Fault

_INSTRUCTION = re.compile(r"### Instruction\n(.*?)\n### End of instruction", re.S)


def labels_responder(rows: list[dict]) -> Any:
    """`rows` as from `constraint_scoring.load_labelled`; unknown instructions get an empty list."""
    import jsonschema

    by_text = {r["instruction"].strip(): r["constraints"] for r in rows}
    validators: dict[str, Any] = {}  # checking a schema against the meta-schema costs ~0.3 s: once per schema

    def respond(body: dict) -> Any:
        text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        m = _INSTRUCTION.search(text)
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not m or schema is None:
            return Fault("400")
        labels = by_text.get(m.group(1).strip(), [])
        answer = {"constraints": [{"type": t, "params": p} for t, p in labels]}
        key = json.dumps(schema, sort_keys=True)
        if key not in validators:
            try:
                validators[key] = jsonschema.validators.validator_for(schema)(schema)
                validators[key].check_schema(schema)
            except jsonschema.SchemaError:
                return Fault("400")
        if not validators[key].is_valid(answer):
            return Fault("400")
        return json.dumps(answer, ensure_ascii=False)

    return respond
