"""The Telegram channel: updates in, the agent console, messages out."""
