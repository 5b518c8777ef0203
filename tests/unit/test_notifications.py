"""Notifications derived from the decision log (kaizen.logic.notifications), their payloads in both formats, the
cursor's retries and give-up, and the signature, verified with standardwebhooks' own Webhook.verify."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from kaizen.api.improvementloop import Decision, NotificationsSpec
from kaizen.logic import notifications as n
from kaizen.notify.webhook import headers

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def decision(seq, action, outcome=None, **evidence):
    return Decision(id=f"bot-20261201T120000-{seq}", time=NOW, action=action, reason=f"{action} because {seq}",
                    evidence={"code": action, **evidence}, outcome=outcome)


LOG = [  # newest first, as stored
    decision(7, "Degraded", consecutiveFailures=3),
    decision(6, "RollOut", "Rollout bot-rollout-b rolled back: success-rate: canary 0.91 < stable 0.99"),
    decision(5, "Retrain", "RetrainJob bot-retrain-b Succeeded: gate accuracy: delta -0.02 < 0"),
    decision(4, "Rollback"),
    decision(3, "RollOut", "Rollout bot-rollout-a promoted"),
    decision(2, "AwaitApproval"),
    decision(1, "Retrain", "RetrainJob bot-retrain-a passed its gates: candidate v2"),
    decision(0, "Nothing"),
]
SPEC = NotificationsSpec.model_validate({"webhooks": [{"url": "http://127.0.0.1:9/hook"}]})


def test_every_event_is_derived_once_oldest_first_with_a_stable_id():
    notices = n.derive(LOG, "team", "bot")
    assert [(x.decision.id.rsplit("-", 1)[1], x.type) for x in notices] == [
        ("1", "RetrainStarted"), ("2", "ApprovalAwaited"), ("3", "CanaryPromoted"), ("4", "RollbackStarted"),
        ("5", "RetrainStarted"), ("5", "GateFailed"), ("6", "CanaryRolledBack"), ("7", "LoopDegraded")]
    assert notices[5].id == "bot-20261201T120000-5.GateFailed"
    assert [x.id for x in n.derive(LOG, "team", "bot")] == [x.id for x in notices]  # same log, same ids
    assert "delta -0.02 < 0" in notices[5].summary and "team/bot" in notices[5].summary


def test_standard_payload_carries_the_decision_id_reason_and_evidence():
    gate = n.derive(LOG, "team", "bot")[5]
    body = json.loads(n.payload(gate, SPEC.webhooks[0]))
    assert body["type"] == "GateFailed" and body["data"]["id"] == gate.id
    assert body["data"]["decision"]["id"] == "bot-20261201T120000-5"
    assert body["data"]["decision"]["reason"] == "Retrain because 5"
    assert body["data"]["decision"]["evidence"] == {"code": "Retrain"}
    assert body["data"]["loop"] == {"namespace": "team", "name": "bot"}
    assert n.payload(gate, SPEC.webhooks[0]) == n.payload(gate, SPEC.webhooks[0])  # a retry sends the same bytes


def test_slack_payload_is_an_incoming_webhook_message():
    degraded = n.derive(LOG, "team", "bot")[-1]
    target = NotificationsSpec.model_validate({"webhooks": [{"url": "http://x/", "format": "slack"}]}).webhooks[0]
    body = json.loads(n.payload(degraded, target))
    assert set(body) == {"text", "blocks"} and "team/bot is degraded" in body["text"]
    assert body["blocks"][0]["type"] == "section" and body["blocks"][0]["text"]["type"] == "mrkdwn"
    assert '"consecutiveFailures": 3' in body["blocks"][1]["text"]["text"]
    assert degraded.decision.id in body["blocks"][2]["elements"][0]["text"]


def test_signature_verifies_with_standardwebhooks_and_fails_on_a_changed_body():
    notice = n.derive(LOG, "team", "bot")[0]
    body = n.payload(notice, SPEC.webhooks[0])
    sent = headers(notice.id, body, SECRET)
    assert sent["webhook-id"] == "bot-20261201T120000-1.RetrainStarted"
    assert Webhook(SECRET).verify(body, sent)["data"]["id"] == notice.id
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("Retrain", "Rollback"), sent)
    assert "webhook-signature" not in headers(notice.id, body, None)


def test_a_first_look_takes_the_stored_log_as_history_and_sends_only_new_events():
    box = n.outbox(SPEC, LOG, LOG[1:], None, NOW, namespace="team", loop="bot")
    assert [d.notice.type for d in box.send] == ["LoopDegraded"]
    fresh = n.outbox(SPEC, LOG[-2:], [], None, NOW, namespace="team", loop="bot")  # a new loop: nothing is history
    assert [d.notice.type for d in fresh.send] == ["RetrainStarted"]


def test_a_delivered_event_is_not_sent_again_and_an_outcome_later_is_sent_once():
    log = [decision(1, "Retrain")]
    box = n.outbox(SPEC, log, [], None, NOW, namespace="team", loop="bot")
    cursor = n.settle(box, {d.key: None for d in box.send}, NOW).cursor
    assert n.outbox(SPEC, log, log, cursor, NOW, namespace="team", loop="bot").send == ()
    ended = [decision(1, "Retrain", "RetrainJob r Failed: out of memory")]
    box = n.outbox(SPEC, ended, log, cursor, NOW, namespace="team", loop="bot")
    assert [d.notice.type for d in box.send] == ["GateFailed"]


def test_failures_back_off_then_are_given_up_with_a_warning():
    log = [decision(1, "Retrain")]
    box = n.outbox(SPEC, log, [], None, NOW, namespace="team", loop="bot")
    now, delays, events = NOW, [], []
    for _ in range(n.MAX_ATTEMPTS):
        settled = n.settle(box, {d.key: "HTTP 500" for d in box.send}, now)
        events += settled.events
        if settled.cursor.pending:
            delays.append(settled.next_due - now)
            assert n.outbox(SPEC, log, log, settled.cursor, now, namespace="team", loop="bot").send == ()  # not yet
            now = settled.next_due
        box = n.outbox(SPEC, log, log, settled.cursor, now, namespace="team", loop="bot")
    assert delays == [timedelta(seconds=s) for s in (1, 2, 4, 8, 16, 32, 60)]
    assert [e.reason for e in events] == ["NotificationRetrying", "NotificationFailed"]
    assert box.send == () and settled.cursor.pending == [] and settled.next_due is None


def test_the_events_filter_sends_only_the_events_asked_for():
    only = NotificationsSpec.model_validate({"webhooks": [{"url": "http://x/"}], "events": ["LoopDegraded"]})
    assert [d.notice.type for d in n.outbox(only, LOG, [], None, NOW, namespace="t", loop="bot").send] == [
        "LoopDegraded"]


def test_a_webhook_added_later_gets_only_what_happens_after_it_was_added():
    log = [decision(1, "Retrain")]
    box = n.outbox(SPEC, log, [], None, NOW, namespace="t", loop="bot")
    cursor = n.settle(box, {d.key: None for d in box.send}, NOW).cursor
    both = NotificationsSpec.model_validate({"webhooks": [{"url": "http://127.0.0.1:9/hook"}, {"url": "http://y/"}]})
    assert n.outbox(both, log, log, cursor, NOW, namespace="t", loop="bot").send == ()
    later = [decision(2, "Degraded"), *log]
    assert [(d.notice.type, d.target.url) for d in n.outbox(both, later, log, cursor, NOW, namespace="t",
                                                            loop="bot").send] == [
        ("LoopDegraded", "http://127.0.0.1:9/hook"), ("LoopDegraded", "http://y/")]
