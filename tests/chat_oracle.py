"""The independent oracle for prompt composition: what `apply_chat_template` + `encode` give."""


def chat_template_ids(tok, context, task, mode):
    """Token ids of the rendered chat for (context, task); context=None means no system turn."""
    if context is None:
        msgs = [{"role": "user", "content": task}]
    elif mode == "system":
        msgs = [{"role": "system", "content": context}, {"role": "user", "content": task}]
    else:
        msgs = [{"role": "user", "content": context + "\n\n" + task}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)
