"""The manifest fields of a task as the review page lists them."""

from django import template

from annotations import manifests

register = template.Library()


@register.filter
def case_details(metadata) -> list[tuple[str, str]]:
    """A filter, not a lookup in the template: a field named `items` must stay a field."""
    return manifests.case_details(metadata)
