"""A small synthetic world of people and facts — the stand-in for "the internet" and "instruction data".

Every person has one value for each relation (lives in a city, works as a job, has a pet, likes a food, loves a
color). From those facts the world writes:

(a) **pretraining text** — short biographies (each fact in one of two phrasings), question/answer pages for a
    third of the people, and fluent "story" sentences about nothing in particular;
(b) **instruction data** — ``question : where does alice live ? answer :`` → ``alice lives in paris .``, with
    plausible wrong answers (same relation, another value) for preference data;
(c) **held-out prompts** — the same kind of questions about people whose Q&A was never trained on.

Everything is deterministic given ``seed``. :meth:`World.probes` derives, for any prompt, the response families
of the paper's probing dataset (lessons/NOTES.md §4) that do not need a model: rephrases, format-preserving
rewrites, another question's answer, a fluent unrelated sentence, word permutations and random tokens. The two
families that need a model, ``init`` (y_init, its own first answer) and ``star`` (y*, its teacher-forced
argmax), are computed by :mod:`tinyld.probes`. :meth:`World.classify` sorts a generated answer into correct,
wrong value, another training question's answer, or other.

Two modes. ``easy`` (the default, used by the demo): an answer is one fact sentence that the pretrained model
mostly knows already, so log π(y⁺|x) starts at a few nats and reaches ~0 within an epoch of SFT. ``hard``: every
answer also carries a free-form *tail*, a story sentence drawn at random for that prompt (~14 nats of content no
model can predict), as the paper's long answers do. There log π(y⁺|x) starts far below 0 and keeps rising for
many epochs, and the teacher-forced argmax y* differs from y⁺ at many positions. Pretraining text is the same in
both modes, so one pretrained model serves both.

Texts are lower-case words separated by single spaces, so the same strings work with the word-level tokenizer
and with GPT-2's BPE.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tinyld.data import Example
from tinyld.runtime import TinyldError, check_choice, check_int, check_seed
from tinyld.tokenizers import WordTokenizer

NAMES = ("alice bob carol dave erin frank grace heidi ivan judy karl liam mona nina oscar peggy quinn rita sam "
         "tina uma victor wendy xena yuri zoe").split()
RELATIONS = {  # relation: (values, canonical answer, rephrase, question)
    "city": ("paris rome tokyo cairo lima oslo delhi quito".split(),
             "{n} lives in {v} .", "the home of {n} is {v} .", "where does {n} live ?"),
    "job": ("baker doctor pilot farmer singer teacher tailor judge".split(),
            "{n} works as a {v} .", "the job of {n} is {v} .", "what does {n} do for work ?"),
    "pet": ("cat dog parrot horse rabbit goat fox owl".split(),
            "{n} has a {v} .", "the pet of {n} is a {v} .", "what pet does {n} have ?"),
    "food": ("apples bread cheese rice soup fish plums honey".split(),
             "{n} likes {v} .", "the favourite food of {n} is {v} .", "what food does {n} like ?"),
    "color": ("red blue green yellow purple orange white black".split(),
              "{n} loves the color {v} .", "the favourite color of {n} is {v} .", "what color does {n} love ?"),
}
STORY = {  # a tiny grammar for fluent sentences that mention no fact
    "adj": "old quiet bright small cold warm tall dark".split(),
    "noun": "river hill road tree house bridge garden window".split(),
    "verb": "runs stands waits rests sleeps shines".split(),
    "prep": "near past under beside behind".split(),
}
PROMPT = "question : {q} answer :"
PROPER = set(NAMES) | set(RELATIONS["city"][0])  # capitalised in natural text
MODES = ("easy", "hard")
ANSWER_KINDS = ("correct", "wrong_value", "other_question", "other")  # World.classify's verdicts


@dataclass(frozen=True)
class Item:
    """One instruction prompt about one fact."""

    prompt: str  # x
    chosen: str  # y⁺: the correct answer, canonical phrasing
    rejected: str  # y⁻: a plausible wrong answer (same relation, another value)
    name: str
    relation: str
    value: str  # the true value
    wrong: str  # the value used in ``rejected``
    tail: str = ""  # hard mode: the free-form sentence that follows the fact in ``chosen``
    wrong_tail: str = ""  # hard mode: the one that follows the wrong fact in ``rejected``

    def example(self, split: str = "") -> Example:
        return Example(self.prompt, self.chosen, self.rejected,
                       {"name": self.name, "relation": self.relation, "split": split})


class World:
    """The world for one seed. ``n_people`` ≤ 26; a third of the people appear with Q&A in pretraining, a third
    form the SFT/preference training prompts, the rest are held out for testing. ``mode`` is ``easy`` (answers
    are one fact sentence) or ``hard`` (each answer also carries a random story sentence; see the module doc)."""

    def __init__(self, seed: int = 0, n_people: int = 24, mode: str = "easy"):
        check_seed("World seed", seed)
        check_int("World n_people", n_people, 3, len(NAMES))
        check_choice("World mode", mode, MODES)
        self.seed, self.mode = seed, mode
        self._items: dict[tuple, Item] = {}
        rng = random.Random(seed)
        self.people = rng.sample(NAMES, n_people)
        self.facts = {n: {r: rng.choice(vals) for r, (vals, *_) in RELATIONS.items()} for n in self.people}
        k = n_people // 3
        self.qa_people, self.train_people, self.test_people = (
            self.people[:k], self.people[k: 2 * k], self.people[2 * k:])

    # ------------------------------------------------------------------ sentences
    def fact(self, name: str, rel: str, value: str | None = None, rephrase: bool = False) -> str:
        if rel not in RELATIONS:
            raise TinyldError(f"unknown relation {rel!r}: choose one of {', '.join(RELATIONS)}")
        if value is None and name not in self.facts:
            raise TinyldError(f"{name!r} is not a person of this world: choose one of {', '.join(self.people)}")
        vals, canon, reph, _ = RELATIONS[rel]
        return (reph if rephrase else canon).format(n=name, v=value or self.facts[name][rel])

    def item(self, name: str, rel: str) -> Item:
        key = (name, rel, self.facts.get(name, {}).get(rel))
        if key not in self._items:  # each item is drawn from its own seeded generators: build it once
            self._items[key] = self._item(name, rel)
        return self._items[key]

    def _item(self, name: str, rel: str) -> Item:
        if name not in self.facts:
            raise TinyldError(f"{name!r} is not a person of this world: choose one of {', '.join(self.people)}")
        if rel not in RELATIONS:
            raise TinyldError(f"unknown relation {rel!r}: choose one of {', '.join(RELATIONS)}")
        true = self.facts[name][rel]
        rng = random.Random(f"{self.seed}/{name}/{rel}")
        wrong = rng.choice([v for v in RELATIONS[rel][0] if v != true])
        chosen, rejected, tail, wrong_tail = self.fact(name, rel), self.fact(name, rel, wrong), "", ""
        if self.mode == "hard":  # its own draws: easy-mode items are unchanged
            trng = random.Random(f"{self.seed}/tail/{name}/{rel}")
            tail, wrong_tail = self.story(trng), self.story(trng)
            chosen, rejected = f"{chosen} {tail}", f"{rejected} {wrong_tail}"
        return Item(PROMPT.format(q=RELATIONS[rel][3].format(n=name)), chosen, rejected, name, rel, true, wrong,
                    tail, wrong_tail)

    def story(self, rng: random.Random) -> str:
        a, n, v, p = (rng.choice(STORY[k]) for k in ("adj", "noun", "verb", "prep"))
        return f"the {a} {n} {v} {p} the {rng.choice(STORY['adj'])} {rng.choice(STORY['noun'])} ."

    # ------------------------------------------------------------------ the three data sets
    def pretrain_docs(self) -> list[str]:
        """Pretraining documents: a biography per person (×3 phrasing draws), Q&A pages, stories."""
        rng = random.Random(f"{self.seed}/pretrain")
        docs = []
        for _ in range(3):
            for n in self.people:
                rels = list(RELATIONS)
                rng.shuffle(rels)
                docs.append(" ".join(self.fact(n, r, rephrase=rng.random() < 0.5) for r in rels))
        for n in self.qa_people:
            for r in RELATIONS:  # the fact alone: pretraining text is the same in both modes
                docs.append(f"{self.item(n, r).prompt} {self.fact(n, r)}")
        docs += [" ".join(self.story(rng) for _ in range(3)) for _ in range(2 * len(self.people))]
        rng.shuffle(docs)
        return docs

    def train_items(self) -> list[Item]:
        """Instruction prompts to finetune on (SFT, DPO)."""
        return [self.item(n, r) for n in self.train_people for r in RELATIONS]

    def test_items(self) -> list[Item]:
        """Held-out prompts: the facts appear in pretraining text, the Q&A never does."""
        return [self.item(n, r) for n in self.test_people for r in RELATIONS]

    def heldout_text(self) -> list[str]:
        """World text not in the pretraining documents: each test person's facts, one sentence per relation
        in a fresh order and phrasing (the biographies themselves were seen)."""
        rng = random.Random(f"{self.seed}/heldout")
        return [" ".join(self.fact(n, r, rephrase=rng.random() < 0.5) for r in rng.sample(list(RELATIONS), 5))
                for n in self.test_people]

    # ------------------------------------------------------------------ vocabulary
    def words(self) -> list[str]:
        """Every word the world can write (sorted)."""
        w = set(NAMES) | set(PROMPT.split()) - {"{q}"}
        for vals, *templates in RELATIONS.values():
            w |= set(vals)
            for t in templates:
                w |= {x for x in t.split() if "{" not in x}
        for vals in STORY.values():
            w |= set(vals)
        return sorted(w | {"the", "."})

    def tokenizer(self) -> WordTokenizer:
        return WordTokenizer(self.words())

    def random_words(self, n: int, rng: random.Random) -> str:
        """n words drawn uniformly from the vocabulary: text the model should find very unlikely."""
        words = self.words()
        return " ".join(rng.choice(words) for _ in range(n))

    # ------------------------------------------------------------------ probe families (paper §4)
    def probes(self, item: Item) -> dict[str, str]:
        """Model-free response families for one prompt, keyed by the paper's names (lessons/NOTES.md §4).

        chosen y_u⁺ · rejected y_u⁻ · gpts_chosen / gpts_rejected (rephrase, same meaning) · gptf_chosen /
        gptf_rejected (same format, another person: meaning changed) · other_chosen y_{j≠u}⁺ (another training
        prompt's answer) · test_chosen y_test⁺ (a held-out prompt's answer) · hum (fluent unrelated sentence) ·
        urnd_chosen (y_u⁺ with its words permuted) · rnd (a permuted unrelated sentence: non-human text) ·
        random_tokens (uniform random words).
        """
        if not isinstance(item, Item):
            raise TinyldError(f"probes() takes an Item (world.train_items()[k]), got {type(item).__name__}")
        rng = random.Random(f"{self.seed}/probes/{item.name}/{item.relation}")
        train, test = self.train_items(), self.test_items()
        pool = train if item in train else test
        other = pool[(pool.index(item) + len(RELATIONS) + 1) % len(pool)] if item in pool else train[0]
        held = test[rng.randrange(len(test))]
        if held == item:
            held = test[(test.index(item) + 1) % len(test)]
        somebody = rng.choice([n for n in self.people if n != item.name])
        t, wt = (f" {item.tail}" if item.tail else ""), (f" {item.wrong_tail}" if item.wrong_tail else "")
        n_words = len(item.chosen.split())
        perm = item.chosen.split()
        for _ in range(100):  # a shuffle that differs from y⁺ (impossible if all its words are the same)
            rng.shuffle(perm)
            if perm != item.chosen.split() or len(set(perm)) < 2:
                break
        rnd = (self.story(rng)).split()
        rng.shuffle(rnd)
        hum = self.story(rng)
        if item.tail:  # similar length to a hard-mode answer: two sentences each
            hum = f"{hum} {self.story(rng)}"
            rnd += self.story(rng).split()
            rng.shuffle(rnd)
        return {
            "chosen": item.chosen,
            "rejected": item.rejected,
            "gpts_chosen": self.fact(item.name, item.relation, item.value, rephrase=True) + t,
            "gpts_rejected": self.fact(item.name, item.relation, item.wrong, rephrase=True) + wt,
            "gptf_chosen": self.fact(somebody, item.relation, item.value) + t,
            "gptf_rejected": self.fact(somebody, item.relation, item.wrong) + wt,
            "other_chosen": other.chosen,
            "test_chosen": held.chosen,
            "hum": hum,
            "urnd_chosen": " ".join(perm),
            "rnd": " ".join(rnd),
            "random_tokens": self.random_words(n_words, rng),
        }

    def question(self, item: Item) -> str:
        """The question of ``item``'s prompt as a person writes it: "Where does Alice live?" (a real LLM's user turn)."""
        return natural(RELATIONS[item.relation][3].format(n=item.name))

    # ------------------------------------------------------------------ judging generated answers
    def classify(self, item: Item, answer: str) -> str:
        """Sort a generated answer to ``item``'s prompt by its first sentence (the fact; a hard-mode tail is not
        judged), in world text or natural text (:func:`natural`; compared as :func:`plain` makes it): ``correct`` (the true fact, either phrasing) · ``wrong_value`` (same person and relation, another
        value) · ``other_question`` (the fact of *another* training prompt: the paper's "answer B to question A")
        · ``other`` (anything else, including no answer)."""
        if not isinstance(item, Item):
            raise TinyldError(f"classify() takes an Item (world.train_items()[k]), got {type(item).__name__}")
        if not isinstance(answer, str):
            raise TinyldError(f"classify() takes the answer as a string, got {type(answer).__name__}")
        words = plain(answer).split()
        first = " ".join(words[: words.index(".") + 1] if "." in words else words)
        if first in self._phrasings(item.name, item.relation, item.value):
            return "correct"
        vals = RELATIONS[item.relation][0]
        if any(first in self._phrasings(item.name, item.relation, v) for v in vals if v != item.value):
            return "wrong_value"
        if first in self._train_facts() and self._train_facts()[first] != (item.name, item.relation):
            return "other_question"
        return "other"

    def _train_facts(self) -> dict[str, tuple[str, str]]:
        """Every phrasing of every training prompt's fact → (name, relation); built once."""
        if not hasattr(self, "_facts_of_train"):
            self._facts_of_train = {f: (o.name, o.relation) for o in self.train_items()
                                    for f in self._phrasings(o.name, o.relation, o.value)}
        return self._facts_of_train

    def _phrasings(self, name: str, rel: str, value: str) -> tuple[str, str]:
        return self.fact(name, rel, value), self.fact(name, rel, value, rephrase=True)


def natural(text: str) -> str:
    """World text as a person writes it, for a real LLM: names and cities capitalised, each sentence starting with
    a capital, "." and "?" joined to the word before them. "alice lives in paris ." → "Alice lives in Paris."."""
    out, start = [], True
    for w in text.split():
        if w in (".", "?") and out:
            out[-1] += w
            start = True
            continue
        out.append(w.capitalize() if start or w in PROPER else w)
        start = False
    return " ".join(out)


def plain(text: str) -> str:
    """Natural text back in the world's form, for comparing answers: lower case, "." "?" "," as words of their own,
    "!" ending a sentence as "." does. "Alice lives in Paris!" → "alice lives in paris ."; world text is unchanged."""
    for p in ".?,":
        text = text.replace(p, f" {p} ")
    text = text.replace("!", " . ")
    return " ".join(text.lower().split())
