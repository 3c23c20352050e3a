"""A research agent answers from the lab's papers, has a summariser confirm it, checks a figure with a
verified tool, runs its analysis in a sandbox, and is refused when it messages another tenant.

Run it on the stack of `symbi up --config examples/scenarios/symbi.toml --policies examples/policies`:

    symbi scenario run examples/scenarios/research.py
"""

from __future__ import annotations

from symbi_cli.scenarios.runtime import Scenario
from symbi_common.envelope import Opened
from symbi_proto.v1 import context_pb2, message_pb2, task_pb2

TITLE = "research: knowledge, a second opinion over the bus, a verified tool, a sandboxed analysis"
QUESTION = "What water temperature makes the corals bleach?"


async def run(scenario: Scenario) -> None:
    await scenario.policies("policies/lab.yaml")
    researcher = await scenario.agent("agents/researcher.symbi", topics=["research.findings"])
    summarizer = await scenario.agent("agents/summarizer.symbi", topics=["research.findings"])
    auditor = await scenario.agent("agents/auditor.symbi")

    await scenario.ingest(researcher, "corpus/*.md")
    answer = await scenario.ask(researcher, QUESTION)
    cited = {c.source for c in answer.citations}
    scenario.expect("reef-bleaching.md" in cited, "the answer cites the bleaching study")
    scenario.expect("lab-notes.md" not in cited, "the answer does not cite the unrelated lab notes")
    scenario.expect("1 °C" in answer.answer, "the answer quotes the threshold")

    async def summarise(question: Opened) -> bytes:
        # The summariser answers as itself: its own RAG query over the knowledge it may read.
        reply = await scenario.context.ask(
            context_pb2.RagAskRequest(
                agent_id=summarizer.agent_id,
                question=question.plaintext.decode(),
                mode=context_pb2.ANSWER_MODE_EXTRACTIVE,
                kinds=[context_pb2.MEMORY_KIND_SHARED_KNOWLEDGE],
            )
        )
        return f"summary: {reply.answer[:400]}".encode()

    await scenario.serve(summarizer, summarise)
    second = await scenario.request(researcher, summarizer, "How do symbionts change heat tolerance?")
    scenario.expect(second is not None and b"Durusdinium" in second.plaintext, "the summariser's reply is grounded")

    published = await scenario.publish(researcher, "research.findings", "bleaching threshold: 1 °C over MMM")
    scenario.expect(published.status == message_pb2.DELIVERY_STATUS_ACCEPTED, "the finding is published")

    counted = await scenario.tool(researcher, "lab-tools", "word_count", {"text": answer.answer})
    scenario.expect(not counted.is_error and not counted.HasField("error"), "the verified tool answers")
    scenario.expect(
        scenario.steps[-1].facts.get("verification") == "VERIFICATION_STATUS_VERIFIED",
        "its whole descriptor was verified with the lab's pinned key",
    )

    status = await scenario.run_task(researcher)
    output = "".join(scenario.outputs.get(status.task.task_id, []))
    scenario.expect(status.state == task_pb2.TASK_STATE_SUCCEEDED, "the analysis task succeeded")
    scenario.expect(status.report.runtime == "runc", "it ran in Tier 1 (runc), as its risk score allows")
    scenario.expect("uid=65534" in output and "capeff=0000000000000000" in output, "as nobody, with no capabilities")
    scenario.expect("interfaces=['lo']" in output, "with no network but loopback")

    refused = await scenario.send(researcher, auditor, "here are our unpublished results")
    scenario.expect(
        refused.reason == message_pb2.MESSAGE_REJECT_REASON_POLICY_DENIED, "a message to another tenant is refused"
    )
    history = await scenario.history(researcher)
    scenario.expect(history[:4] == ["INITIALIZING", "READY", "RUNNING", "READY"], f"researcher went {history}")
