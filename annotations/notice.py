"""The notice shown wherever an AI draft is shown or exported."""

AI_NOTICE = (
    "AI-generated draft for research use only. Not a medical device; "
    "not for diagnosis or patient care."
)
