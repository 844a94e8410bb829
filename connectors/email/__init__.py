"""The email channel: parser, SMTP server, IMAP poller, SMTP sender."""
