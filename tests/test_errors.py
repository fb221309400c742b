"""unireg.errors: every error meant for people is one line naming the subject and the file."""

from unireg.errors import UniregError


def test_message_is_one_line_with_subject_and_file_first():
    err = UniregError(
        "cannot read image\n  (truncated gzip)\tstream;  re-copy it", subject="sub-003", path="data/sub-003.nii.gz"
    )
    assert str(err) == "sub-003: data/sub-003.nii.gz: cannot read image (truncated gzip) stream; re-copy it"
    assert "\n" not in str(err)
    assert str(UniregError("no atlas")) == "no atlas"


def test_context_fills_only_what_the_raiser_did_not_know():
    err = UniregError("bad header", path="a.nii").with_context(subject="sub-1", path="b.nii")
    assert (err.subject, err.path) == ("sub-1", "a.nii")
    assert str(err) == "sub-1: a.nii: bad header"
