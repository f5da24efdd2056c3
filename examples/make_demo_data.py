"""Write the demo's synthetic preference pairs: examples/demo_data/prefs.jsonl.

Deterministic (one seeded `random.Random`; no network, no model): re-running it reproduces the committed
file byte for byte. Each row is {"prompt", "chosen", "rejected"}:
  chosen   = a relevant, polite, helpful answer to the prompt's question;
  rejected = one failure mode: rude/dismissive, a polite answer about a DIFFERENT topic, a refusal of a
             harmless request, or an unhelpfully vague non-answer.
Rows are shuffled before writing, so any tail (the demo holds out the last 200) mixes topics and modes.

    python examples/make_demo_data.py [--output PATH] [--n 1200] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "demo_data" / "prefs.jsonl"

# name: short noun phrase used in templates; questions: topic-specific prompts; facts: helpful sentences.
TOPICS = json.loads((Path(__file__).resolve().parent / "demo_data" / "topics.json").read_text(encoding="utf-8"))

# Openers that name the topic; an off-topic answer names ITS topic, which then does not match the prompt.
TOPIC_OPENERS = ["Here is what to know about {name}. ", "A few key points about {name}. ", "On {name}: ",
                 "When it comes to {name}, this is what matters. ", "Here's a short guide to {name}. ",
                 "Let me explain {name} briefly. "]
OPENERS = ["", "", "Sure! ", "Good question! ", "Happy to help. ", "Of course. ", "Great question. ",
           "Here is a quick overview. ", "Absolutely, here's what you need to know. ", "Sure thing. ",
           "Thanks for asking! ", "Glad you asked. "]
CLOSERS = ["", "", "", " Hope that helps!", " Let me know if you'd like more detail.", " Good luck!",
           " Feel free to ask if anything is unclear.", " I hope this is useful."]
PROMPT_PREFIXES = ["", "", "", "Quick question: ", "Hi! ", "I'm a complete beginner. ", "Can you help me? ",
                   "My friend asked me this and I didn't know: ", "Please explain simply: ", "Hello! ",
                   "I've always wondered about this. ", "Hey there. "]
PROMPT_SUFFIXES = ["", "", "", " Thanks!", " Thank you in advance.", " Keep it short, please.",
                   " I'd appreciate a clear answer.", " Any advice is welcome."]

RUDE = ["Seriously? Just search for it yourself, I'm not your personal assistant.",
        "That's a dumb question. Everyone already knows about {name}.",
        "Ugh, not this again. Figure it out on your own.",
        "Who even cares about {name}? Stop wasting my time.",
        "Read a book or something. I'm not explaining {name} to you.",
        "Wow, you really don't know that? Embarrassing.",
        "Not my problem. Ask someone who has the patience for this.",
        "Go away. I have better things to do than answer silly questions about {name}.",
        "If you can't work this out yourself, that's on you.",
        "Whatever. Do what you want, I don't care.",
        "Stop bothering me with basic stuff like {name}.",
        "Nobody has time for this. Look it up."]
REFUSALS = ["I'm sorry, but I can't help with that request.",
            "I'm afraid I can't provide information about {name}.",
            "Unfortunately, I must decline to answer questions about {name}.",
            "I'm not able to assist with this topic. Please consult another source.",
            "As an AI assistant, I can't give advice on {name}. Sorry about that.",
            "I apologise, but this is a request I cannot fulfil.",
            "Sorry, I'm unable to discuss {name}. Is there anything else I can do?",
            "That's not something I'm able to help with, I'm afraid.",
            "I won't be answering this one, sorry. It's outside what I can cover.",
            "I'd rather not get into {name}. Perhaps try asking a professional."]
VAGUE = ["Well, it depends on a lot of things, really. Everyone has a different view on it.",
         "{Name} is a complicated subject. You might want to look into it more at some point.",
         "There are several approaches, and some are better than others. It's hard to say.",
         "Hmm, that's an interesting one. There are many factors involved, so it varies.",
         "It's different for everybody, so there's no single answer to that.",
         "Maybe. It could go either way, honestly.",
         "There's a lot to say about {name}, and people have written about it for years.",
         "Good question. The answer is not simple, and it depends on the situation.",
         "You could try a few things and see what happens. Results may vary.",
         "Some people say one thing and some say another. It's really up to you.",
         "That's something many people wonder about. There are pros and cons.",
         "I guess it just kind of works the way it does. Hard to explain."]
MODES = [("off_topic", 0.3), ("rude", 0.25), ("refusal", 0.2), ("vague", 0.25)]


def helpful_answer(rng: random.Random, topic: dict) -> str:
    facts = [topic["facts"][i] for i in sorted(rng.sample(range(len(topic["facts"])), 2))]  # keep their order
    opener = rng.choice(OPENERS) if rng.random() < 0.5 else fill(rng, TOPIC_OPENERS, topic)
    return (opener + " ".join(facts) + rng.choice(CLOSERS)).strip()


def fill(rng: random.Random, templates: list[str], topic: dict) -> str:
    return rng.choice(templates).format(name=topic["name"], Name=topic["name"][0].upper() + topic["name"][1:])


def make_pair(rng: random.Random) -> dict:
    topic = rng.choice(TOPICS)
    prompt = (rng.choice(PROMPT_PREFIXES) + rng.choice(topic["questions"]) + rng.choice(PROMPT_SUFFIXES)).strip()
    chosen = helpful_answer(rng, topic)
    mode = rng.choices([m for m, _ in MODES], weights=[w for _, w in MODES])[0]
    if mode == "off_topic":  # just as polite and fluent, but answers a different question
        rejected = helpful_answer(rng, rng.choice([t for t in TOPICS if t is not topic]))
    elif mode == "rude":
        rejected = fill(rng, RUDE, topic)
    elif mode == "refusal":
        rejected = fill(rng, REFUSALS, topic)
    else:
        rejected = fill(rng, VAGUE, topic)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def generate(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        row = make_pair(rng)
        key = (row["prompt"], row["chosen"], row["rejected"])
        if key in seen or row["chosen"] == row["rejected"]:
            continue
        seen.add(key)
        rows.append(row)
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the .jsonl")
    ap.add_argument("--n", type=int, default=1200, help="number of preference pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = generate(args.n, args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} pairs to {args.output}")


if __name__ == "__main__":
    main()
