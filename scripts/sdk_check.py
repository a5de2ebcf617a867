#!/usr/bin/env python3
"""Drives the ElevenLabs simulator with the official Python SDK, unchanged.

Not part of CI (it needs `pip install elevenlabs`). Usage:
    cargo run -- simulate-elevenlabs --port 5055 --step-ms 200 &
    python3 scripts/sdk_check.py http://127.0.0.1:5055
"""
import sys
import time

from elevenlabs.client import ElevenLabs

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:5055"
client = ElevenLabs(api_key="any-key", base_url=base)
ai = client.conversational_ai

agents = ai.agents.list(page_size=10)
print("agents:", [a.name for a in agents.agents])
agent = ai.agents.get(agent_id=agents.agents[0].agent_id)
print("first message:", agent.conversation_config.agent.first_message)
numbers = ai.phone_numbers.list()
print("numbers:", [n.phone_number for n in numbers])

batch = ai.batch_calls.create(
    call_name="SDK check",
    agent_id=agent.agent_id,
    agent_phone_number_id=numbers[0].phone_number_id,
    scheduled_time_unix=None,
    recipients=[{"phone_number": "+573138539150", "conversation_initiation_client_data": {"dynamic_variables": {"name": "Ana", "monto": "10"}}},
                {"phone_number": "+573138539159"}],
)
print("batch:", batch.id, batch.status)
for _ in range(60):
    detail = ai.batch_calls.get(batch_id=batch.id)
    if detail.status == "completed":
        break
    time.sleep(0.2)
print("final:", detail.status, [(r.phone_number, r.status) for r in detail.recipients])
listing = ai.batch_calls.list()
print("workspace batches:", len(listing.batch_calls))
conversation = ai.conversations.get(conversation_id=detail.recipients[0].conversation_id)
print("conversation:", conversation.status, conversation.analysis.call_successful if conversation.analysis else None)
print("retry:", ai.batch_calls.retry(batch_id=batch.id).retry_count if hasattr(ai.batch_calls, "retry") else "n/a")
print("cancel:", ai.batch_calls.cancel(batch_id=batch.id).status)
print("SDK CHECK OK")
