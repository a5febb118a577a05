"""Generate the embedded default data set: data/embedded/biographies.json (SQuAD v1.1 format).

Fictional biographies, built deterministically from a seed: every paragraph tells of two people,
their facts interleaved, so a reader must match the question's name and kind of fact (a year of
birth or of death, a place, a teacher or a spouse) to the right span. A model that has not been
fine-tuned for extractive QA scores near zero, a fine-tuned one far above.
Run `python data/make_embedded.py` to rebuild it byte for byte.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "embedded" / "biographies.json"
SEED = 2024
N_ARTICLES = 200
PARAGRAPHS_PER_ARTICLE = 4

SYLLABLES = "ka lo mi ra sen tor vel an is ur bel dan fe gor hal jun ker lin mor nes ol pra quin sta ve wil zor".split()
PROFESSIONS = "chemist painter architect astronomer composer engineer physician cartographer botanist " \
    "sculptor historian mathematician linguist geologist violinist poet".split()
INSTRUMENTS = ["microscope", "telescope", "printing press", "steam pump", "loom", "compass", "barometer", "sextant"]
FIELDS = ["river surveys", "bird migration", "glass making", "ancient coins", "tidal clocks", "folk songs",
          "bridge design", "crop rotation", "star charts", "paper milling"]
MONTHS = "January February March April May June July August September October November December".split()


def name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def person(rng: random.Random) -> dict:
    born = rng.randint(1650, 1900)
    return {
        "name": f"{name(rng)} {name(rng, 3)}",
        "born": str(born),
        "died": str(born + rng.randint(35, 90)),
        "month": rng.choice(MONTHS),
        "birthplace": name(rng, 3),
        "deathplace": name(rng, 2) + " " + rng.choice(["Bay", "Falls", "Hill", "Harbour", "Valley"]),
        "profession": rng.choice(PROFESSIONS),
        "teacher": f"{name(rng)} {name(rng, 2)}",
        "spouse": f"{name(rng)} {name(rng, 2)}",
        "invention": rng.choice(INSTRUMENTS),
        "field": rng.choice(FIELDS),
        "children": str(rng.randint(2, 9)),
        "institute": f"the {name(rng, 2)} Institute",
    }


SENTENCES = [
    ("{name} was a {profession} born in {month} {born} in the town of {birthplace}.",
     [("When was {name} born?", "born"), ("Where was {name} born?", "birthplace"),
      ("What was the profession of {name}?", "profession"), ("In which month was {name} born?", "month")]),
    ("As a young student, {first} learned the craft from {teacher} at {institute}.",
     [("Who taught {name}?", "teacher"), ("Where did {name} study?", "institute")]),
    ("{first} is best remembered for an improved {invention} and for work on {field}.",
     [("What instrument did {name} improve?", "invention"), ("What did {name} work on?", "field")]),
    ("In later life {first} married {spouse}, and the couple had {children} children.",
     [("Whom did {name} marry?", "spouse"), ("How many children did {name} have?", "children")]),
    ("{first} died in {died} at {deathplace}.",
     [("When did {name} die?", "died"), ("Where did {name} die?", "deathplace")]),
]


def sentences_about(rng: random.Random, who: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """The introduction and two more facts about one person, each with the questions it answers."""
    facts = dict(who, first=who["name"].split()[0])
    chosen = [0] + rng.sample(range(1, len(SENTENCES)), 2)
    return [(SENTENCES[i][0].format(**facts), [(q.format(**facts), facts[f]) for q, f in SENTENCES[i][1]])
            for i in chosen]


def paragraph(rng: random.Random, people: list[dict]) -> dict:
    """Two people in one paragraph, their facts interleaved: the question's name picks the answer."""
    blocks = [sentences_about(rng, who) for who in people]
    intros, rest = [b[0] for b in blocks], [s for b in blocks for s in b[1:]]
    rng.shuffle(rest)
    context, qas = "", []
    for sentence, questions in intros + rest:
        start = len(context)
        context += sentence + " "
        question, value = rng.choice(questions)
        qas.append({
            "id": "",  # made unique in build()
            "question": question,
            "answers": [{"text": value, "answer_start": start + sentence.index(value)}],
        })
    return {"context": context.strip(), "qas": qas}


def two_people(rng: random.Random) -> list[dict]:
    while True:
        people = [person(rng), person(rng)]
        if people[0]["name"].split()[0] != people[1]["name"].split()[0]:
            return people


def build(seed: int = SEED) -> dict:
    rng = random.Random(seed)
    articles, seen = [], set()
    while len(articles) < N_ARTICLES:
        title = f"{name(rng, 2)} school of {rng.choice(PROFESSIONS)}s"
        if title in seen:
            continue
        seen.add(title)
        paragraphs = [paragraph(rng, two_people(rng)) for _ in range(PARAGRAPHS_PER_ARTICLE)]
        for p_index, par in enumerate(paragraphs):
            for q_index, qa in enumerate(par["qas"]):
                qa["id"] = f"bio-{len(articles):03d}-{p_index}-{q_index}"
        articles.append({"title": title, "paragraphs": paragraphs})
    return {"version": "1.1", "data": articles}


def main() -> None:
    data = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    n = sum(len(p["qas"]) for a in data["data"] for p in a["paragraphs"])
    print(f"wrote {OUT}: {len(data['data'])} articles, {n} questions")


if __name__ == "__main__":
    main()
