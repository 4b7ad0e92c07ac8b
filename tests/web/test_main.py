"""The URL bar (web_client/main.js): an ARIA combobox driven by keyboard, mouse and touch."""

from __future__ import annotations

from page_helpers import open_page
from playwright.sync_api import expect


def type_and_wait(page, text: str):
    """Type into the URL bar key by key and wait for the suggestions of the full text."""
    page.get_by_role("combobox").click()
    page.keyboard.type(text)
    page.wait_for_function("t => document.getElementById('suggestions').dataset.for === t", arg=text)
    return page.get_by_role("option")


def layout(page) -> list[dict]:
    """Boxes of the input and of everything below it, to detect layout jumps."""
    return [page.locator(s).bounding_box() for s in ("#url", "#visit-note", "section.panel >> nth=0")]


def test_typing_shows_suggestions_with_combobox_roles(page):
    """Typing opens a listbox of five options that all start with the typed text."""
    open_page(page)
    options = type_and_wait(page, "goo")
    combobox = page.get_by_role("combobox")
    expect(combobox).to_have_attribute("aria-expanded", "true")
    expect(combobox).to_have_attribute("aria-controls", "suggestions")
    expect(page.get_by_role("listbox")).to_be_visible()
    expect(options).to_have_count(5)
    assert all(text.startswith("goo") for text in options.all_inner_texts())


def test_arrows_then_tab_accept_the_highlighted_suggestion(page):
    """Down, down, up, down moves aria-selected; Tab fills the input with that option and closes."""
    open_page(page)
    options = type_and_wait(page, "wiki")
    second = options.nth(1).get_attribute("data-value")
    for key in ("ArrowDown", "ArrowDown", "ArrowUp", "ArrowDown"):
        page.keyboard.press(key)
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("combobox")).to_have_attribute("aria-activedescendant", "suggestion-1")
    page.keyboard.press("Tab")
    expect(page.get_by_role("combobox")).to_have_value(second)
    expect(page.get_by_role("combobox")).to_have_attribute("aria-expanded", "false")
    expect(page.get_by_role("combobox")).to_be_focused()


def test_right_arrow_at_the_end_accepts_the_first_suggestion(page):
    """→ with the caret at the end takes the top suggestion."""
    open_page(page)
    first = type_and_wait(page, "amaz").first.get_attribute("data-value")
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("combobox")).to_have_value(first)


def test_click_accepts_and_keeps_focus(page):
    """Clicking an option fills the input; the focus stays in the URL bar."""
    open_page(page)
    third = type_and_wait(page, "face").nth(2)
    value = third.get_attribute("data-value")
    third.click()
    expect(page.get_by_role("combobox")).to_have_value(value)
    expect(page.get_by_role("combobox")).to_be_focused()


def test_escape_closes_without_changing_the_text(page):
    """Esc hides the listbox and leaves what was typed."""
    open_page(page)
    type_and_wait(page, "yout")
    page.keyboard.press("Escape")
    expect(page.get_by_role("combobox")).to_have_attribute("aria-expanded", "false")
    expect(page.get_by_role("listbox")).to_be_hidden()
    expect(page.get_by_role("combobox")).to_have_value("yout")


def test_enter_visits_and_records_locally(page):
    """Enter "visits": the URL lands in the local history list and the bar is cleared."""
    open_page(page)
    type_and_wait(page, "example.org/docs")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")
    expect(page.locator("#history .history-url")).to_have_text(["example.org/docs"])
    expect(page.get_by_role("combobox")).to_have_value("")
    expect(page.locator("#local-urls")).to_contain_text("1 (1 not yet trained on)")


def test_suggestions_cause_no_layout_jump(page):
    """The dropdown overlays the page: nothing moves when it opens or closes."""
    open_page(page)
    before = layout(page)
    type_and_wait(page, "goo")
    assert layout(page) == before
    page.keyboard.press("Escape")
    assert layout(page) == before
