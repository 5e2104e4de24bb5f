"""Small, patient helpers to drive a Streamlit page through Selenium.

Streamlit reruns the script after each interaction; while it runs, the status widget
(``[data-testid="stStatusWidget"]``, "Running...") is shown. Every action here waits for
that rerun to finish (widget gone for a moment) before the next step, and every lookup
retries until its timeout: elements are replaced on each rerun, so a found element may
go stale a moment later.

Widgets are found by their visible label, which the pages keep stable (the widget
contract in the tests' brief: "Constitution name", "Submit experiment", ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

T = TypeVar("T")

RETRYABLE = (NoSuchElementException, StaleElementReferenceException, ElementClickInterceptedException,
             ElementNotInteractableException)


def _literal(text: str) -> str:
    """``text`` as an XPath string literal (handles both quote kinds)."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ", \"'\", ".join(f"'{p}'" for p in text.split("'")) + ")"


class StreamlitPage:
    """One browser tab on the workbench at ``base_url``."""

    def __init__(self, driver: Any, base_url: str, *, token: str | None = None, timeout: float = 60) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.token = token  # `sami ui`'s access token, sent with every page opened
        self.timeout = timeout

    # --- waiting -------------------------------------------------------------------------

    def until(self, check: Callable[[], T | None], what: str, timeout: float | None = None,
              every: float = 0.25) -> T:
        """Retry ``check`` until it returns something truthy (element lookups that fail
        with a retryable error count as "not yet")."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        last: BaseException | None = None
        while True:
            try:
                got = check()
                if got:
                    return got
            except RETRYABLE as err:
                last = err
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}"
                                     + (f" (last error: {type(last).__name__}: {str(last).strip()[:400]})"
                                        if last else "")
                                     + f"\npage text:\n{self.text()[-3000:]}")
            time.sleep(every)

    def running(self) -> bool:
        return bool(self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'))

    def wait_idle(self, timeout: float | None = None, settle: float = 0.6) -> None:
        """Wait until the app is connected and no rerun has been running for ``settle`` s
        (a rerun can start a moment after the click that caused it)."""
        self.until(lambda: self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="stApp"]'), "the app",
                   timeout)
        quiet_since = [None]

        def quiet() -> bool:
            if self.running() or self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSkeleton"]'):
                quiet_since[0] = None
                return False
            now = time.monotonic()
            if quiet_since[0] is None:
                quiet_since[0] = now
            return now - quiet_since[0] >= settle

        self.until(quiet, "the rerun to finish", timeout, every=0.1)

    def text(self) -> str:
        try:
            return self.driver.find_element(By.CSS_SELECTOR, "section.stMain, [data-testid='stMain']").text
        except WebDriverException:
            try:
                return self.driver.find_element(By.TAG_NAME, "body").text
            except WebDriverException:
                return ""

    def sidebar_text(self) -> str:
        try:
            return self.driver.find_element(By.CSS_SELECTOR, "[data-testid='stSidebar']").text
        except WebDriverException:
            return ""

    def wait_sidebar_text(self, text: str, timeout: float | None = None) -> str:
        return self.until(lambda: self.sidebar_text() if text in self.sidebar_text() else None,
                          f"sidebar text {text!r}", timeout)

    def wait_text(self, text: str, timeout: float | None = None) -> str:
        return self.until(lambda: self.text() if text in self.text() else None, f"text {text!r}", timeout)

    def exceptions(self) -> list[str]:
        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')]

    def assert_no_exception(self) -> None:
        errs = self.exceptions()
        assert not errs, f"the page raised:\n{errs[0][:3000]}"

    # --- navigation ----------------------------------------------------------------------

    def open(self, url_path: str = "", *, expect: str | None = None, **query: str) -> None:
        """Load ``/<url_path>?query`` and wait for its first render (and ``expect``)."""
        if self.token and "token" not in query:
            query = {**query, "token": self.token}
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        self.driver.get(f"{self.base_url}/{url_path}" + (f"?{qs}" if qs else ""))
        self.wait_idle()
        if expect:
            self.wait_text(expect)
        self.wait_idle()

    def nav(self, title: str, *, expect: str | None = None) -> None:
        """Click the sidebar navigation link ``title`` (a client-side page switch)."""
        xpath = (f"//*[@data-testid='stSidebarNav']//a[.//span[normalize-space(.)={_literal(title)}]"
                 f" or normalize-space(.)={_literal(title)}]")
        self.until(lambda: self._click(self.driver.find_element(By.XPATH, xpath)), f"nav link {title!r}")
        self.wait_idle()
        self.wait_text(expect or title)
        self.wait_idle()

    # --- widgets -------------------------------------------------------------------------

    def _click(self, el: WebElement) -> bool:
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
        el.click()
        return True

    def button(self, label: str) -> WebElement:
        xpath = (f"//button[normalize-space(.)={_literal(label)}]"
                 f" | //a[@data-testid='stPageLink-NavLink' and normalize-space(.)={_literal(label)}]")
        return self.until(lambda: next((b for b in self.driver.find_elements(By.XPATH, xpath)
                                        if b.is_displayed()), None), f"button {label!r}")

    def click(self, label: str, *, expect: str | None = None, timeout: float | None = None) -> None:
        self.until(lambda: self._click(self.button(label)), f"a click on {label!r}")
        self.wait_idle(timeout)
        if expect:
            self.wait_text(expect, timeout)
            self.wait_idle(timeout)

    def _widget(self, testid: str, label: str) -> WebElement:
        xpath = (f"//*[@data-testid={_literal(testid)}]"
                 f"[.//label[normalize-space(.)={_literal(label)}]"
                 f" or .//*[@data-testid='stWidgetLabel'][normalize-space(.)={_literal(label)}]]")
        return self.until(lambda: self.driver.find_element(By.XPATH, xpath), f"{testid} {label!r}")

    def has_widget(self, testid: str, label: str) -> bool:
        xpath = (f"//*[@data-testid={_literal(testid)}]"
                 f"[.//label[normalize-space(.)={_literal(label)}]"
                 f" or .//*[@data-testid='stWidgetLabel'][normalize-space(.)={_literal(label)}]]")
        return bool(self.driver.find_elements(By.XPATH, xpath))

    def type(self, label: str, value: str, *, testid: str = "stTextInput") -> None:
        """Replace a text input's value (a number input's with ``testid="stNumberInput"``)
        and commit it (Enter), then wait for the rerun."""
        def do() -> bool:
            box = self._widget(testid, label).find_element(By.TAG_NAME, "input")
            box.click()
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.DELETE)
            box.send_keys(value)
            box.send_keys(Keys.ENTER)
            return True

        self.until(do, f"typing into {label!r}")
        self.wait_idle()

    def _open_select(self, label: str, search: str | None) -> None:
        """Open selectbox ``label``'s list (typing ``search`` into its search box)."""
        box = self._widget("stSelectbox", label)
        field = box.find_element(By.CSS_SELECTOR, "input")  # a searchable combobox
        self._click(field)
        if search:
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(search)

    def _close_select(self) -> None:
        self.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        time.sleep(0.3)

    def options(self, label: str) -> list[str]:
        """The options of selectbox ``label`` in view (opens and closes its list)."""
        self._open_select(label, None)
        found = self.until(lambda: [o.text for o in self.driver.find_elements(By.CSS_SELECTOR, "[role='option']")
                                    if o.text] or None, f"the options of {label!r}")
        self._close_select()
        return found

    def select(self, label: str, option: str | Callable[[str], bool], *, search: str | None = None) -> str:
        """Pick an option of selectbox ``label`` (its exact text, or the first that
        ``option(text)`` accepts); returns the option's text.

        Long lists are virtualized (only the options in view exist in the DOM), so the
        text ``search`` (default: the option itself when it is a string) is typed into
        the select's search box first to bring the option into view."""
        match = (lambda t: t == option) if isinstance(option, str) else option
        search = option if search is None and isinstance(option, str) else search
        picked: list[str] = []

        def do() -> bool:
            self._open_select(label, search)
            opts = self.until(lambda: self.driver.find_elements(By.CSS_SELECTOR, "[role='option']") or None,
                              f"the options of {label!r}", timeout=10)
            for o in opts:
                if match(o.text.strip()):
                    picked.append(o.text.strip())
                    self._click(o)
                    return True
            texts = [o.text for o in opts]
            self._close_select()
            raise NoSuchElementException(f"no option of {label!r} matches; options in view: {texts}")

        self.until(do, f"an option of {label!r}")
        self.wait_idle()
        value = self._widget("stSelectbox", label).find_element(By.CSS_SELECTOR, "input").get_attribute("value")
        assert value == picked[-1], f"{label!r} shows {value!r} after picking {picked[-1]!r}"
        return picked[-1]

    def multiselect(self, label: str, options: list[str]) -> list[str]:
        """Make multiselect ``label`` hold exactly ``options`` (their exact texts, in this
        order): remove every chosen value, then pick each option from the list (typed into
        the search box first, the list being virtualized). Returns the values it shows."""
        def remove_one() -> bool:
            box = self._widget("stMultiSelect", label)
            buttons = [b for b in box.find_elements(By.CSS_SELECTOR, "button[aria-label^='Remove ']")
                       if b.is_displayed()]
            if not buttons:
                return True
            self._click(buttons[0])
            self.wait_idle()
            return False

        self.until(remove_one, f"{label!r} emptied")
        for option in options:
            def pick(option: str = option) -> bool:
                field = self._widget("stMultiSelect", label).find_element(By.CSS_SELECTOR, "input[role='combobox']")
                self._click(field)
                field.send_keys(Keys.CONTROL, "a")
                field.send_keys(option)
                for o in self.driver.find_elements(By.CSS_SELECTOR, "[role='option']"):
                    if o.text.strip() == option:
                        self._click(o)
                        return True
                self._close_select()
                raise NoSuchElementException(f"no option {option!r} of {label!r} in view")

            self.until(pick, f"option {option!r} of {label!r}")
            self._close_select()
            self.wait_idle()
        shown = [t.get_attribute("aria-label") for t in self._widget("stMultiSelect", label).find_elements(
            By.CSS_SELECTOR, "[data-tag]") if t.is_displayed()]
        assert shown == options, f"{label!r} shows {shown} after picking {options}"
        return shown

    def upload(self, path: Path, *, label: str | None = None) -> None:
        """Give ``path`` to a file uploader (the one labelled ``label``, else the first)."""
        if label is None:
            root = self.until(lambda: self.driver.find_element(By.CSS_SELECTOR, '[data-testid="stFileUploader"]'),
                              "a file uploader")
        else:
            root = self._widget("stFileUploader", label)
        root.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(path))
        self.wait_idle()

    def wait_download(self, folder: Path, suffix: str, timeout: float = 60) -> Path:
        """The first finished download ending in ``suffix`` in ``folder``."""
        def done() -> Path | None:
            if any(p.suffix == ".crdownload" for p in folder.iterdir()):
                return None
            return next((p for p in sorted(folder.iterdir()) if p.name.endswith(suffix)), None)

        return self.until(done, f"a {suffix} download in {folder}", timeout)
