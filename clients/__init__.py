"""edxlive.clients: the acquisition simulator, the shared feed, the dashboard and tail."""
