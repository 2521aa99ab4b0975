"""A reasoning task for the synthetic world: two-step word problems with checkable answers.

A problem is (name, object, a, b, c): "*name* has *a* *objects* , gets *b* more and gives *c* away ." The answer
is r = a + b − c. A solution is written in two steps and a final sentence, and there are 16 valid ways to write
it — the steps in either order (add first: a + b = s, then s − c = r; or subtract first: a − c = d, then
d + b = r), each step in one of two phrasings, and one of two final sentences::

    question : ana has 3 coins , gets 4 more and gives 2 away . how many coins now ? answer :
    3 plus 4 is 7 . 7 minus 2 is 5 . the answer is 5 .
    take 2 from 3 to get 1 . 4 plus 1 is 5 . so ana has 5 coins .

Each training example carries *one* written solution (its form is drawn at random), so copying the training
trace and answering correctly are different things: a model that has learned the arithmetic can be right in a
form it was never shown. :meth:`Arithmetic.grade` checks only the final answer, as graders of GSM8k do.

Pretraining text gives partial skill: every addition and subtraction fact up to ``top`` (written in all
phrasings) and worked problems for a separate set of number triples, in both question wordings. The triples of
training, test and pretraining problems never overlap, so a test question can only be answered by doing the
arithmetic. Everything is deterministic given ``seed``; texts are lower-case words separated by single spaces.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tinyld.data import Example
from tinyld.runtime import TinyldError, check_int, check_seed
from tinyld.tokenizers import WordTokenizer
from tinyld.world import NAMES, PROMPT

OBJECTS = "apples coins shells stamps marbles cards pens cups".split()
QUESTIONS = (  # the training wording, and the rewording used to perturb training questions
    "{n} has {a} {o} , gets {b} more and gives {c} away . how many {o} now ?",
    "{n} starts with {a} {o} , then receives {b} and loses {c} . how many {o} are left ?",
)
ADD = ("{x} plus {y} is {z} .", "{y} plus {x} is {z} .")  # two phrasings of x + y = z
SUB = ("{x} minus {y} is {z} .", "take {y} from {x} to get {z} .")  # two phrasings of x − y = z
FINAL = ("the answer is {r} .", "so {n} has {r} {o} .")
N_FORMS = 2 * len(ADD) * len(SUB) * len(FINAL)  # step order × add phrasing × subtract phrasing × final sentence


@dataclass(frozen=True)
class Problem:
    name: str
    obj: str
    a: int
    b: int
    c: int

    @property
    def answer(self) -> int:
        return self.a + self.b - self.c

    def question(self, wording: int = 0) -> str:
        return QUESTIONS[wording].format(n=self.name, o=self.obj, a=self.a, b=self.b, c=self.c)

    def prompt(self, wording: int = 0) -> str:
        return PROMPT.format(q=self.question(wording))

    def steps(self, form: int) -> list[str]:
        """The solution in written form ``form`` (0 … N_FORMS−1) as its sentences: two steps and the final one."""
        check_int("form", form, 0, N_FORMS - 1)
        order, add, sub, fin = form // 8, form // 4 % 2, form // 2 % 2, form % 2
        a, b, c = self.a, self.b, self.c
        if order == 0:  # add first: a + b = s, s − c = r
            first, second = ADD[add].format(x=a, y=b, z=a + b), SUB[sub].format(x=a + b, y=c, z=self.answer)
        else:  # subtract first: a − c = d, d + b = r
            first, second = SUB[sub].format(x=a, y=c, z=a - c), ADD[add].format(x=a - c, y=b, z=self.answer)
        return [first, second, FINAL[fin].format(r=self.answer, n=self.name, o=self.obj)]

    def solution(self, form: int) -> str:
        return " ".join(self.steps(form))

    def example(self, form: int, split: str = "") -> Example:
        return Example(self.prompt(), self.solution(form), None,
                       {"a": self.a, "b": self.b, "c": self.c, "form": form, "split": split})


def final_answer(text: str) -> int | None:
    """The number a solution ends on: the last sentence must be "the answer is R ." or "so … has R … .";
    anything else (no final sentence, a word instead of a number, text after it) gives None."""
    if not isinstance(text, str):
        return None
    sentences = [s.split() for s in text.strip().split(" .")]
    if len(sentences) < 2 or sentences[-1]:  # the text must end with " ."
        return None
    last = sentences[-2]
    if last[:3] == ["the", "answer", "is"] and len(last) == 4:
        word = last[3]
    elif len(last) == 5 and last[0] == "so" and last[2] == "has":
        word = last[3]
    else:
        return None
    return int(word) if word.isdigit() else None


class Arithmetic:
    """The word-problem world for one seed. Numbers run from 0 to ``top``; a problem needs a, b, c ≥ 1, a + b ≤
    ``top`` and c ≤ a (so both step orders stay within 0 … top). The valid triples are split once into test,
    pretraining and training-pool triples (``n_test``, ``n_pretrain``, the rest)."""

    def __init__(self, seed: int = 0, top: int = 10, n_test: int = 40, n_pretrain: int = 35):
        check_seed("Arithmetic seed", seed)
        check_int("Arithmetic top", top, 3, 30)
        self.seed, self.top = seed, top
        triples = [(a, b, c) for a in range(1, top) for b in range(1, top - a + 1) for c in range(1, a + 1)]
        check_int("Arithmetic n_test", n_test, 1, len(triples) - 2)
        check_int("Arithmetic n_pretrain", n_pretrain, 0, len(triples) - n_test - 1)
        rng = random.Random(f"arith/{seed}")
        rng.shuffle(triples)
        self.test_triples = triples[:n_test]
        self.pretrain_triples = triples[n_test: n_test + n_pretrain]
        self.pool_triples = triples[n_test + n_pretrain:]
        self.names = NAMES

    def problem(self, triple: tuple[int, int, int], key: str) -> Problem:
        """The problem for ``triple`` with a name and object drawn from ``key`` (deterministic)."""
        rng = random.Random(f"arith/{self.seed}/{key}/{triple}")
        return Problem(rng.choice(self.names), rng.choice(OBJECTS), *triple)

    def form_of(self, problem: Problem, key: str = "") -> int:
        """The written form a training example carries: drawn at random per problem."""
        return random.Random(f"arith/{self.seed}/form/{key}/{problem}").randrange(N_FORMS)

    # ------------------------------------------------------------------ data sets
    def test_problems(self) -> list[Problem]:
        return [self.problem(t, "test") for t in self.test_triples]

    def pool(self, copies: int = 3) -> list[Problem]:
        """Every problem training data may be drawn from, in a fixed shuffled order: ``copies`` questions (other
        names and objects) for each triple that no test or pretraining problem uses."""
        check_int("Arithmetic.pool copies", copies, 1, 100)
        out = list(dict.fromkeys(self.problem(t, f"train{k}") for k in range(copies) for t in self.pool_triples))
        random.Random(f"arith/{self.seed}/pool").shuffle(out)
        return out

    def train_examples(self, problems: list[Problem]) -> list[Example]:
        """One written solution per problem, in the form :meth:`form_of` draws."""
        return [p.example(self.form_of(p), "train") for p in problems]

    def pretrain_docs(self, repeats: int = 3) -> list[str]:
        """Arithmetic facts in every phrasing (``repeats`` shuffled passes, eight sentences per document) and
        worked problems on the pretraining triples, each in both wordings and two random forms."""
        rng = random.Random(f"arith/{self.seed}/pretrain")
        facts = []
        for x in range(self.top + 1):
            for y in range(self.top + 1 - x):
                facts += [ADD[0].format(x=x, y=y, z=x + y)]
                facts += [s.format(x=x + y, y=y, z=x) for s in SUB]
        docs = []
        for _ in range(repeats):
            rng.shuffle(facts)
            docs += [" ".join(facts[i: i + 8]) for i in range(0, len(facts), 8)]
        for t in self.pretrain_triples:
            p = self.problem(t, "pretrain")
            for wording in range(len(QUESTIONS)):
                for form in rng.sample(range(N_FORMS), 2):
                    docs.append(f"{p.prompt(wording)} {p.solution(form)}")
        rng.shuffle(docs)
        return docs

    # ------------------------------------------------------------------ grading and perturbation
    @staticmethod
    def grade(problem: Problem, text: str) -> bool:
        """True when the solution's final answer is a + b − c (the steps are not checked)."""
        if not isinstance(problem, Problem):
            raise TinyldError(f"grade() takes a Problem, got {type(problem).__name__}")
        return final_answer(text) == problem.answer

    def perturbed(self, problem: Problem, form: int) -> dict[str, tuple[str, str]]:
        """Two perturbations of a training problem, as (prompt, forced opening): the question reworded
        (``reworded``), and the solution opened with the first step of the *other* step order than the reference
        ``form`` uses (``opening``); the model writes the rest."""
        other = (form + 8) % N_FORMS
        return {"reworded": (problem.prompt(1), ""),
                "opening": (problem.prompt(0), problem.steps(other)[0])}

    # ------------------------------------------------------------------ vocabulary
    def words(self) -> list[str]:
        w = set(self.names) | set(OBJECTS) | {str(i) for i in range(self.top + 1)} | set(PROMPT.split()) - {"{q}"}
        for t in QUESTIONS + ADD + SUB + FINAL:
            w |= {x for x in t.split() if "{" not in x}
        return sorted(w)

    def tokenizer(self) -> WordTokenizer:
        return WordTokenizer(self.words())
