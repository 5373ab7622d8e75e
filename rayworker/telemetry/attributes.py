"""What a span may say about an alert: ids the pipeline made, never event payload.

An alert's group values are event data (a principal id, an IP address): they go into span
attributes only when ``telemetry.record_payload`` is set. The tenant, rule, severity, alert id
(a hash) and counts are the pipeline's own and always present, so a trace can be searched by
alert id and joined to the alert row.
"""

from __future__ import annotations

from opentelemetry.util.types import AttributeValue

from rayworker.alerts import Alert

__all__ = ["alert_attributes"]


def alert_attributes(alert: Alert, *, record_payload: bool) -> dict[str, AttributeValue]:
    """The attributes of an alert's span."""
    attributes: dict[str, AttributeValue] = {
        "rayworker.tenant": alert.tenant_id,
        "rayworker.alert.id": alert.id,
        "rayworker.alert.rule": alert.rule_id,
        "rayworker.alert.severity": alert.severity,
        "rayworker.alert.occurrences": alert.occurrences,
        "rayworker.alert.evidence_count": len(alert.evidence_ids),
    }
    if record_payload:
        for name, value in alert.group.items():
            attributes[f"rayworker.alert.group.{name}"] = str(value)
    return attributes
