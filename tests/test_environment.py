"""Tests are hermetic: the user's GENREC_* variables (the README tells users to export
GENREC_SOURCE and GENREC_DATA_DIR) never reach a test. CI runs this file with both set."""

import os


def test_the_users_genrec_variables_never_reach_a_test():
    assert not sorted(n for n in os.environ if n.startswith("GENREC_"))
