from annotations.notice import AI_NOTICE


def notice(request):
    """The AI-draft notice, for every page that shows a draft."""
    return {"AI_NOTICE": AI_NOTICE}
