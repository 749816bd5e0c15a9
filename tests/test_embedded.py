from lmforge.data.embedded import embedded_documents, shakespeare_plays


def test_plays_parse_into_scenes_and_speeches():
    plays = shakespeare_plays()
    assert len(plays) >= 37
    hamlet = next(p for p in plays if p.slug == "hamlet")
    assert hamlet.title == "Hamlet"
    first = hamlet.scenes[0].speeches[0]
    assert first.speaker == "BERNARDO" and first.lines == ["Who's there?"]


def test_documents_are_plain_text():
    docs = embedded_documents("shakespeare")
    assert len(docs) == len(shakespeare_plays())
    text = dict(docs)["shakespeare/hamlet"]
    assert "BERNARDO:\nWho's there?" in text and "**" not in text
