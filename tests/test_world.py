from tinyld.world import RELATIONS, World


def test_world_is_deterministic_and_seeded():
    a, b, c = World(0), World(0), World(1)
    assert a.pretrain_docs() == b.pretrain_docs() and a.facts == b.facts
    assert a.facts != c.facts


def test_splits_are_disjoint_and_items_consistent(world):
    train, test = world.train_items(), world.test_items()
    assert {i.name for i in train}.isdisjoint({i.name for i in test})
    assert {i.name for i in train}.isdisjoint(world.qa_people)
    docs = " ".join(world.pretrain_docs())
    for it in train + test:
        assert it.value == world.facts[it.name][it.relation]
        assert it.wrong != it.value and it.wrong in RELATIONS[it.relation][0]
        assert it.prompt not in docs  # no trained-on Q&A for these people
        assert it.chosen in docs or world.fact(it.name, it.relation, rephrase=True) in docs  # fact is known


def test_probe_families(world):
    it = world.train_items()[3]
    p = world.probes(it)
    assert p["chosen"] == it.chosen and p["rejected"] == it.rejected
    assert it.value in p["gpts_chosen"] and p["gpts_chosen"] != it.chosen  # same meaning, other words
    assert p["gptf_chosen"].split()[1:] == it.chosen.split()[1:] and p["gptf_chosen"] != it.chosen  # same format
    assert p["other_chosen"] in {i.chosen for i in world.train_items()} - {it.chosen}
    assert p["test_chosen"] in {i.chosen for i in world.test_items()}
    assert sorted(p["urnd_chosen"].split()) == sorted(it.chosen.split()) and p["urnd_chosen"] != it.chosen
    assert len(p["random_tokens"].split()) == len(it.chosen.split())
    vocab = set(world.words())
    assert all(set(v.split()) <= vocab for v in p.values())
    assert world.probes(it) == p  # deterministic


def test_heldout_text_is_not_in_pretraining(world):
    docs = set(world.pretrain_docs())
    assert all(t not in docs for t in world.heldout_text())
