"""The Textual dashboard. It imports from the service only the protocol and the config."""
