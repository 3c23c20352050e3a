"""Bus credentials: what an agent's runtime needs to use the bus, handed out on request.

``symbi.lifecycle.bus_credentials`` is a service subject (agents' broker users cannot
publish on it). For an agent that exists and has not ended it returns:

- the agent's private keys (kept by the lifecycle service since creation);
- a broker user of its own, when the broker authenticates (``[messaging].issuer_file``):
  a fresh NKey and a JWT signed by the account's signing key whose permissions confine
  the agent to its own subjects (``natsauth.agent_permissions``) and to the topics policy
  lets it subscribe to (``message_send``, operation ``subscribe``; each refusal listed);
- its durable inbox consumer, created here if missing;
- the router's public identity.

Each issue is audited (``bus.credentials_issued``: topics, expiry, broker user, requester;
never the secrets).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from google.protobuf.message import Message
from nats.js import JetStreamContext

from symbi_common import natsauth, natsio, policy_client, subjects
from symbi_common.audit_events import AuditBuffer, build_event
from symbi_common.bus import inbox
from symbi_common.envelope import AgentKeys
from symbi_common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from symbi_common.natsauth import CredentialIssuer
from symbi_common.policy_client import PolicyDecider
from symbi_common.settings import MessagingSettings
from symbi_lifecycle.bus.directory import ENDED_STATES, AgentDirectory, topic_target
from symbi_lifecycle.bus.metrics import RouterMetrics
from symbi_lifecycle.store import AgentStore
from symbi_proto.v1 import message_pb2

log = logging.getLogger(__name__)
MAX_TOPICS = 256


class CredentialDesk:
    def __init__(
        self,
        store: AgentStore,
        directory: AgentDirectory,
        policy: PolicyDecider,
        js: JetStreamContext,
        settings: MessagingSettings,
        router_keys: AgentKeys,
        issuer: CredentialIssuer | None,
        audit: AuditBuffer,
        metrics: RouterMetrics,
        instance_id: str,
    ) -> None:
        self.store = store
        self.directory = directory
        self.policy = policy
        self.js = js
        self.settings = settings
        self.router_keys = router_keys
        self.issuer = issuer
        self.audit = audit
        self.metrics = metrics
        self.instance_id = instance_id

    async def issue(self, req: message_pb2.BusCredentialsRequest, _: natsio.RequestMeta) -> Message:
        subjects.token(req.agent_id)
        if len(req.topics) > MAX_TOPICS:
            raise InvalidArgumentError(f"at most {MAX_TOPICS} topics per agent")
        for topic in req.topics:
            subjects.bus_topic(topic)
        self.directory.forget(req.agent_id)
        info = await self.directory.get(req.agent_id)
        if info is None:
            raise NotFoundError(f"no agent {req.agent_id!r}")
        if info.state in ENDED_STATES:
            raise FailedPreconditionError(f"agent {req.agent_id} is {info.state_name}; it gets no credentials")
        private = await self.store.private_keys(req.agent_id)
        if private is None:
            raise FailedPreconditionError(f"agent {req.agent_id} has no private keys on record")
        allowed, refused = await self._topics(info.principal(), req.topics)
        ttl_s = req.ttl.ToNanoseconds() / 1e9 if req.HasField("ttl") else self.settings.credentials_ttl_s
        if not 0 < ttl_s <= self.settings.credentials_ttl_s:
            raise InvalidArgumentError(f"ttl must be positive and at most {self.settings.credentials_ttl_s:g}s")
        await inbox.ensure_consumer(self.js, req.agent_id, self.settings)
        out = message_pb2.BusCredentials(
            agent_id=req.agent_id,
            tenant=info.tenant,
            key_id=info.identity.key_id,
            signing_private_key=private[0],
            agreement_private_key=private[1],
            inbox_prefix=natsauth.agent_inbox_prefix(req.agent_id),
            router=self.router_keys.identity(),
            refused_topics=[message_pb2.TopicRefusal(topic=t, reason=r) for t, r in refused],
            inbox_stream=subjects.INBOX_STREAM,
            inbox_consumer=subjects.inbox_consumer(req.agent_id),
        )
        permissions = out.permissions
        permissions.agent_id = req.agent_id
        user = ""
        if self.issuer is not None:
            issued = self.issuer.for_agent(req.agent_id, allowed, ttl_s=ttl_s)
            out.nats_user_jwt, out.nats_user_seed = issued.jwt, issued.user.seed
            user = issued.user.public
            permissions.publish_allow.extend(issued.publish_allow)
            permissions.subscribe_allow.extend(issued.subscribe_allow)
            permissions.expires_at.FromNanoseconds(int(issued.expires_at * 1e9))
        else:
            publish, subscribe = natsauth.agent_permissions(req.agent_id, allowed)
            permissions.publish_allow.extend(publish)
            permissions.subscribe_allow.extend(subscribe)
        permissions.user = user
        self.metrics.credentials.inc()
        details = {
            "topics": allowed,
            "refused_topics": [t for t, _ in refused],
            "broker_user": user or "(broker without authentication)",
            "ttl_s": ttl_s,
            "requested_by": req.requested_by,
        }
        source = self.instance_id
        if not self.audit.offer(
            lambda: build_event("bus.credentials_issued", source=source, agent_id=req.agent_id, details=details)
        ):
            raise FailedPreconditionError("audit trail unavailable; no credentials are issued unaudited")
        return out

    async def _topics(
        self, principal: policy_client.Principal, topics: Iterable[str]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        allowed: list[str] = []
        refused: list[tuple[str, str]] = []
        for topic in sorted(set(topics)):
            decision = await self.policy.evaluate(
                policy_client.request("message_send", principal, topic_target(topic), operation="subscribe")
            )
            if decision.WhichOneof("outcome") == "deny":
                refused.append((topic, decision.deny.reason))
            else:
                allowed.append(topic)
        return allowed, refused
