from inference.backends.base import AI_NOTICE


def notice(request):
    return {"AI_NOTICE": AI_NOTICE}
