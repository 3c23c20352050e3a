"""Risk assessment: which sandbox tier a task must run in.

The score is a weighted sum of five factors, each normalised to [0, 1]:

=====================  ======  ====================================================
factor                 weight  value
=====================  ======  ====================================================
data_sensitivity       0.30    public 0, internal 1/3, confidential 2/3, restricted 1
code_trust             0.30    trusted 0, reviewed 1/2, untrusted 1
network_access         0.20    0 without, 1 with
filesystem_access      0.10    none 0, read_only 0.3, read_write 1
external_integrations  0.10    one third per integration, at most 1
=====================  ======  ====================================================

An unspecified factor counts as its riskiest plausible value: unknown code is
untrusted, unknown data internal, unknown filesystem access read-only. A score
below 0.5 means Tier 1 (Docker/runc), 0.5 or more Tier 2 (gVisor). The tier a task
gets is the highest of that, the tier policy requires and the tier its definition
asks for: policy and risk can raise a tier, nothing lowers one.
"""

from __future__ import annotations

from symbi_proto.v1 import common_pb2, sandbox_pb2

C = common_pb2
S = sandbox_pb2
THRESHOLD = 0.5
WEIGHTS = {
    "data_sensitivity": 0.3,
    "code_trust": 0.3,
    "network_access": 0.2,
    "filesystem_access": 0.1,
    "external_integrations": 0.1,
}
SENSITIVITY = {
    C.DATA_SENSITIVITY_UNSPECIFIED: 1 / 3,
    C.DATA_SENSITIVITY_PUBLIC: 0.0,
    C.DATA_SENSITIVITY_INTERNAL: 1 / 3,
    C.DATA_SENSITIVITY_CONFIDENTIAL: 2 / 3,
    C.DATA_SENSITIVITY_RESTRICTED: 1.0,
}
TRUST = {
    S.CODE_TRUST_UNSPECIFIED: 1.0,
    S.CODE_TRUST_TRUSTED: 0.0,
    S.CODE_TRUST_REVIEWED: 0.5,
    S.CODE_TRUST_UNTRUSTED: 1.0,
}
FILESYSTEM = {
    S.FILESYSTEM_ACCESS_UNSPECIFIED: 0.3,
    S.FILESYSTEM_ACCESS_NONE: 0.0,
    S.FILESYSTEM_ACCESS_READ_ONLY: 0.3,
    S.FILESYSTEM_ACCESS_READ_WRITE: 1.0,
}
TIER_NAMES = {S.SANDBOX_TIER_UNSPECIFIED: "none", S.SANDBOX_TIER_TIER1_DOCKER: "Tier 1",
              S.SANDBOX_TIER_TIER2_GVISOR: "Tier 2"}  # fmt: skip


def assess(
    factors: sandbox_pb2.RiskFactors,
    *,
    policy_minimum: int = S.SANDBOX_TIER_UNSPECIFIED,
    requested: int = S.SANDBOX_TIER_UNSPECIFIED,
) -> sandbox_pb2.RiskAssessment:
    values = {
        "data_sensitivity": SENSITIVITY.get(factors.data_sensitivity, 1.0),
        "code_trust": TRUST.get(factors.code_trust, 1.0),
        "network_access": 1.0 if factors.network_access else 0.0,
        "filesystem_access": FILESYSTEM.get(factors.filesystem_access, 1.0),
        "external_integrations": min(1.0, len(factors.external_integrations) / 3),
    }
    out = sandbox_pb2.RiskAssessment(policy_minimum_tier=policy_minimum, requested_tier=requested)  # type: ignore[arg-type]
    for name, weight in WEIGHTS.items():
        out.contributions.add(factor=name, weight=weight, value=round(values[name], 6))
    out.score = round(sum(WEIGHTS[n] * v for n, v in values.items()), 6)
    out.score_tier = S.SANDBOX_TIER_TIER1_DOCKER if out.score < THRESHOLD else S.SANDBOX_TIER_TIER2_GVISOR
    out.chosen_tier = max(out.score_tier, policy_minimum, requested)  # type: ignore[assignment]
    raised = [n.replace("_", " ") for n, v in values.items() if v * WEIGHTS[n] >= 0.1 - 1e-9]
    why = f"score {out.score:.2f}" + (f" ({', '.join(raised)})" if raised else "")
    if out.chosen_tier != out.score_tier:
        source = "policy" if policy_minimum == out.chosen_tier else "the definition"
        why += f" -> {TIER_NAMES[out.score_tier]}, raised to {TIER_NAMES[out.chosen_tier]} by {source}"
    else:
        why += f" -> {TIER_NAMES[out.chosen_tier]}"
    out.reason = why
    return out
