"""Draw a validated workflow as a Mermaid flowchart (renders on GitHub, in docs and in most editors)."""

from __future__ import annotations

from .validate import Plan


def to_mermaid(plan: Plan) -> str:
    """One box per node (id and type), one arrow per wired input labelled ``output -> input : TYPE``."""
    lines = ["flowchart LR"]
    for node_id in plan.order:
        lines.append(f'    {node_id}["{node_id}<br/><small>{plan.nodes[node_id].spec.name}</small>"]')
    for source, target, data in sorted(plan.graph.edges(data=True), key=lambda e: (plan.order.index(e[1]), e[2]["input"])):
        port_type = plan.nodes[source].spec.outputs[data["output"]]
        label = data["output"] if data["output"] == data["input"] else f"{data['output']} → {data['input']}"
        lines.append(f'    {source} -->|"{label} : {port_type}"| {target}')
    return "\n".join(lines) + "\n"
