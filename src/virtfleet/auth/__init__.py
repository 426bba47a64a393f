"""Authentication (who is asking) and authorization (may they): users, tokens, sessions, the access policy."""
