"""Who may upload and how much: tokens, tickets, limits, the wrong-token brake, addresses."""
