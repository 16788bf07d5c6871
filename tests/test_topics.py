"""
Tests for L{txplatform.topics}.
"""

from twisted.trial.unittest import SynchronousTestCase

from txplatform.topics import checkEventName, checkPattern, topicMatches


class TopicTests(SynchronousTestCase):
    def test_exact(self) -> None:
        """
        A pattern without wildcards matches only itself.
        """
        self.assertTrue(topicMatches("post.created", "post.created"))
        self.assertFalse(topicMatches("post.created", "post.deleted"))
        self.assertFalse(topicMatches("post.created", "post.created.late"))

    def test_star(self) -> None:
        """
        C{*} matches exactly one word.
        """
        self.assertTrue(topicMatches("post.*", "post.created"))
        self.assertFalse(topicMatches("post.*", "post"))
        self.assertFalse(topicMatches("post.*", "post.created.late"))
        self.assertTrue(topicMatches("*.created", "account.created"))

    def test_hash(self) -> None:
        """
        C{#} matches zero or more words, anywhere.
        """
        self.assertTrue(topicMatches("#", "post.created"))
        self.assertTrue(topicMatches("post.#", "post"))
        self.assertTrue(topicMatches("post.#", "post.created.late"))
        self.assertTrue(topicMatches("#.created", "post.created"))
        self.assertTrue(topicMatches("a.#.z", "a.z"))
        self.assertTrue(topicMatches("a.#.z", "a.b.c.z"))
        self.assertFalse(topicMatches("a.#.z", "a.b.c"))
        self.assertTrue(topicMatches("#.*", "x"))
        self.assertFalse(topicMatches("*.#.*", "x"))

    def test_validation(self) -> None:
        """
        Event names are words; patterns may also hold wildcards.
        """
        self.assertEqual(checkEventName("post.created"), "post.created")
        for bad in ["", "post..created", "post.*", "Post.created", "post created"]:
            self.assertRaises(ValueError, checkEventName, bad)
        self.assertEqual(checkPattern("post.*"), "post.*")
        for bad in ["", "post.*x", "post..x"]:
            self.assertRaises(ValueError, checkPattern, bad)
