"""The tests, one folder per package of t2i_rlhf (tests/<package>/test_<module>.py)."""
