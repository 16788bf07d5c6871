"""
The direct transport: calls between services over the secure channel, to
addresses derived from their 3-byte ids, with no broker in between.
"""
