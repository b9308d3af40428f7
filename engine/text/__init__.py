"""Text around tokens: chat templates, the text stream, tool calls and grammars."""
