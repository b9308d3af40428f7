"""OpenAI `n > 1`: the samples run together, so the scheduler serves them in the same rounds.

They used to run one after another. Served in one process (runners off) the scheduler's widest
round shows it; greedy samples are identical to n = 1, seeded ones reproducible.
"""

from __future__ import annotations

from openai import OpenAI

from nanocommander.backend.app import MANAGER

NO_EOS = {"268": -100, "270": -100}


def test_n_samples_share_rounds_and_keep_their_text(start_server, recipe_of):
    live = start_server([recipe_of("nb")], runners=False, num_parallel=4)
    client = OpenAI(base_url=f"{live.url}/v1", api_key="x")
    ask = dict(model="nb", messages=[{"role": "user", "content": "hi"}], max_tokens=24, logit_bias=NO_EOS)
    one = client.chat.completions.create(temperature=0, **ask).choices[0].message.content
    three = client.chat.completions.create(n=3, temperature=0, **ask)
    assert [c.message.content for c in three.choices] == [one] * 3
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert live.app[MANAGER].loaded["nb:latest"].composite.scheduler.widest >= 3  # one round, three samples
    seeded = [client.chat.completions.create(n=2, temperature=1.0, seed=7, **ask) for _ in range(2)]
    assert [c.message.content for c in seeded[0].choices] == [c.message.content for c in seeded[1].choices]
    streamed = client.completions.create(
        model="nb", prompt="hi", n=3, max_tokens=12, temperature=0, stream=True
    )
    texts = ["", "", ""]
    for event in streamed:
        for choice in event.choices:
            texts[choice.index] += choice.text
    assert texts[0] == texts[1] == texts[2] != ""
