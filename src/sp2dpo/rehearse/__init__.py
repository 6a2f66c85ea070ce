"""The paper's run rehearsed at full size on one machine against loopback servers (`sp2dpo rehearse`)."""
