"""Risk scores and tiers: the weights, the threshold, and that nothing lowers a tier."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from symbi_common.risk import WEIGHTS, assess
from symbi_proto.v1 import common_pb2, sandbox_pb2

S = sandbox_pb2
TIER1, TIER2 = S.SANDBOX_TIER_TIER1_DOCKER, S.SANDBOX_TIER_TIER2_GVISOR


def factors(**kw: object) -> sandbox_pb2.RiskFactors:
    return sandbox_pb2.RiskFactors(**kw)  # type: ignore[arg-type]


def test_low_risk_work_runs_in_tier1_and_high_risk_in_tier2() -> None:
    safe = assess(factors(data_sensitivity=common_pb2.DATA_SENSITIVITY_PUBLIC, code_trust=S.CODE_TRUST_TRUSTED,
                          filesystem_access=S.FILESYSTEM_ACCESS_NONE))  # fmt: skip
    assert (safe.score, safe.chosen_tier) == (0.0, TIER1)
    assert safe.reason == "score 0.00 -> Tier 1"
    risky = assess(factors(code_trust=S.CODE_TRUST_UNTRUSTED, network_access=True))
    assert risky.score == 0.3 * 1 / 3 + 0.3 + 0.2 + 0.1 * 0.3
    assert risky.chosen_tier == TIER2
    assert risky.reason == "score 0.63 (data sensitivity, code trust, network access) -> Tier 2"
    assert [c.factor for c in risky.contributions] == list(WEIGHTS)


def test_the_threshold_is_half() -> None:
    public, untrusted, no_files = (common_pb2.DATA_SENSITIVITY_PUBLIC, S.CODE_TRUST_UNTRUSTED,
                                   S.FILESYSTEM_ACCESS_NONE)  # fmt: skip
    below = assess(factors(code_trust=untrusted, data_sensitivity=public, filesystem_access=no_files,
                           external_integrations=["a", "b", "c"]))  # fmt: skip
    assert below.score == 0.4
    assert below.chosen_tier == TIER1
    at = assess(factors(code_trust=untrusted, network_access=True, data_sensitivity=public,
                        filesystem_access=no_files))  # fmt: skip
    assert at.score == 0.5
    assert at.chosen_tier == TIER2


def test_unknown_code_counts_as_untrusted() -> None:
    assert assess(factors()).contributions[1].value == 1.0


def test_policy_and_the_definition_raise_the_tier() -> None:
    safe = factors(code_trust=S.CODE_TRUST_TRUSTED, data_sensitivity=common_pb2.DATA_SENSITIVITY_PUBLIC)
    by_policy = assess(safe, policy_minimum=TIER2)
    assert by_policy.chosen_tier == TIER2
    assert by_policy.reason.endswith("-> Tier 1, raised to Tier 2 by policy")
    asked = assess(safe, requested=TIER2)
    assert asked.reason.endswith("raised to Tier 2 by the definition")


@given(
    sensitivity=st.sampled_from(list(common_pb2.DataSensitivity.values())),
    trust=st.sampled_from(list(S.CodeTrust.values())),
    network=st.booleans(),
    filesystem=st.sampled_from(list(S.FilesystemAccess.values())),
    integrations=st.lists(st.text(max_size=5), max_size=5),
    policy=st.sampled_from([0, TIER1, TIER2]),
    requested=st.sampled_from([0, TIER1, TIER2]),
)
def test_nothing_lowers_a_tier(
    sensitivity: int, trust: int, network: bool, filesystem: int, integrations: list[str], policy: int, requested: int
) -> None:
    result = assess(
        factors(data_sensitivity=sensitivity, code_trust=trust, network_access=network, filesystem_access=filesystem,
                external_integrations=integrations),
        policy_minimum=policy,
        requested=requested,
    )  # fmt: skip
    assert 0.0 <= result.score <= 1.0
    assert result.chosen_tier >= max(result.score_tier, policy, requested)
    assert result.chosen_tier in (TIER1, TIER2)
    more = assess(factors(data_sensitivity=sensitivity, code_trust=trust, network_access=True,
                          filesystem_access=filesystem, external_integrations=integrations))  # fmt: skip
    assert more.score >= result.score  # asking for the network never lowers the score
