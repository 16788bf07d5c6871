"""
Tests for L{txplatform_services.notify.mentions}.
"""

from twisted.trial.unittest import SynchronousTestCase

from txplatform_services.notify.mentions import mentionedUsernames


class MentionTests(SynchronousTestCase):
    def test_caseInsensitive(self) -> None:
        """
        Mentions match without regard to case and come back lowercased,
        once each, in order.
        """
        self.assertEqual(mentionedUsernames("@Bob and @ALICE, again @bob"), ["bob", "alice"])

    def test_endsAtOtherCharacters(self) -> None:
        """
        A mention ends at the first character outside a-z, 0-9 and _.
        """
        self.assertEqual(
            mentionedUsernames("hi @bob's @carol-x @dave_2!"), ["bob", "carol", "dave_2"]
        )
        self.assertEqual(mentionedUsernames("@évé @eve\u00e9"), ["eve"])

    def test_lengths(self) -> None:
        """
        Runs too short or too long for a username mention no one.
        """
        self.assertEqual(mentionedUsernames("@ab @" + "a" * 33 + " @" + "b" * 32), ["b" * 32])

    def test_nothing(self) -> None:
        """
        A bare @, or none, mentions nobody.
        """
        self.assertEqual(mentionedUsernames("@ @@ @. email me"), [])
