"""LangGraph Studio reads the graph's input and output JSON schemas (`/assistants/{id}/schemas`)."""
from __future__ import annotations

from graph.studio import make_graph


def test_the_state_schemas_render():
    graph = make_graph()
    for schema in (graph.get_input_jsonschema(), graph.get_output_jsonschema()):
        assert {"signals", "verdicts", "staged"} <= set(schema["properties"])
