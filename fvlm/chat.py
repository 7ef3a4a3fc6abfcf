"""Chat text -> the two token segments around the video, with loss targets.

Every sequence is `prefix + [visual tokens] + suffix`:
- text_first:  prefix = system turn + user turn up to the end of the question,
               suffix = end of the user turn + assistant header (+ answer).
- video_first: prefix is empty; suffix is the whole chat (upstream fVLM layout).
The chat template of the tokenizer renders the text; the video's place is found with a marker
string that never reaches the tokenizer. Segments are tokenized separately, the same way in
training and inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

VIDEO_MARKER = "\x00fvlm-video\x00"
LOSS_KINDS = ("answer", "all", "none")


@dataclass
class ChatTokens:
    prefix_ids: list[int]
    prefix_targets: list[bool]  # which prefix tokens are loss targets
    suffix_ids: list[int]
    suffix_targets: list[bool]

    def __len__(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)


def encode_chat(
    tokenizer,
    user: str,
    assistant: str | None = None,
    *,
    layout: str = "text_first",
    system: str | None = "You are a helpful AI assistant.",
    loss: str = "answer",
    has_video: bool = True,
) -> ChatTokens:
    """Tokenize one exchange. `assistant=None` ends with the generation prompt (inference).

    loss: "answer" = the assistant reply incl. its closing <|im_end|> are targets (SFT);
          "all" = every token (stage 1); "none" = nothing (inference).
    """
    if not isinstance(user, str):
        raise InputError(f"prompt must be a string, got {type(user).__name__}")
    if loss not in LOSS_KINDS:
        raise InputError(f"loss must be one of {LOSS_KINDS}, got {loss!r}")
    in_text = has_video and layout == "text_first"
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user + (VIDEO_MARKER if in_text else "")})

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answer = ""
    if assistant is not None:
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": assistant}], tokenize=False
        )
        if not full.startswith(prompt):
            raise InputError("the tokenizer's chat template does not extend the generation prompt")
        answer = full[len(prompt) :]
    if in_text:
        before, after = prompt.split(VIDEO_MARKER)
    else:
        before, after = "", prompt

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    prefix, middle, reply = ids(before), ids(after), ids(answer)
    every = loss == "all"
    return ChatTokens(
        prefix_ids=prefix,
        prefix_targets=[every] * len(prefix),
        suffix_ids=middle + reply,
        suffix_targets=[every] * len(middle) + [loss != "none"] * len(reply),
    )
