"""GUI actions: pyautogui / AGUVIS strings and Android JSON into the unified action space."""

from __future__ import annotations

import pytest

from fineharbor.core.cleaning.gui_actions import GuiActionError, normalize_action_text

SCREEN = (1080, 2400)  # width, height in pixels


@pytest.mark.parametrize(
    ("raw", "unified"),
    [
        ("pyautogui.click(x=0.31, y=0.77)", "click(x=0.31, y=0.77)"),
        ("pyautogui.click(0.123456, 0.5)", "click(x=0.1235, y=0.5)"),
        ("pyautogui.doubleClick(x=0.2, y=0.4)", "double_click(x=0.2, y=0.4)"),
        ("pyautogui.rightClick(x=0.2, y=0.4)", "right_click(x=0.2, y=0.4)"),
        ("pyautogui.click(x=0.2, y=0.4, button='right')", "right_click(x=0.2, y=0.4)"),
        ("pyautogui.moveTo(x=0.04, y=0.405)", "move_mouse(x=0.04, y=0.405)"),
        ("pyautogui.dragTo(x=0.5, y=0.2)", "drag(to_coord=[0.5, 0.2])"),
        (
            "pyautogui.moveTo(0.1, 0.2)\npyautogui.dragTo(0.5, 0.6)",
            "drag(from_coord=[0.1, 0.2], to_coord=[0.5, 0.6])",
        ),
        (
            "pyautogui.dragTo(from_coord=[0.87, 0.423], to_coord=[0.8102, 0.9463])",
            "drag(from_coord=[0.87, 0.423], to_coord=[0.8102, 0.9463])",
        ),
        ("pyautogui.scroll(-5)", "scroll(direction='down', amount=5)"),
        ("pyautogui.scroll(5)", "scroll(direction='up', amount=5)"),
        ("pyautogui.scroll(page=-0.1)", "scroll(direction='up', amount=10)"),
        ("pyautogui.hscroll(page=0.25)", "scroll(direction='right', amount=25)"),
        ("pyautogui.write(message='hi there')", "type(text='hi there')"),
        ('pyautogui.typewrite("it\'s")', 'type(text="it\'s")'),
        ("pyautogui.hotkey('ctrl', 'c')", "press(keys=['ctrl', 'c'])"),
        ("pyautogui.hotkey(keys=['ctrl', 'c'])", "press(keys=['ctrl', 'c'])"),
        ("pyautogui.press('enter')", "press(keys='enter')"),
        ("pyautogui.press(keys=['enter'])", "press(keys='enter')"),
        ("mobile.home()", "navigate_home()"),
        ("mobile.back()", "navigate_back()"),
        ("mobile.open_app(app_name='drupe')", "open_app(app_name='drupe')"),
        (
            "mobile.swipe(from_coord=[0.581, 0.898], to_coord=[0.601, 0.518])",
            "swipe(from_coord=[0.581, 0.898], to_coord=[0.601, 0.518])",
        ),
        ("mobile.long_press(x=0.799, y=0.911)", "long_press(x=0.799, y=0.911)"),
        ("mobile.wait(seconds=3)", "wait(seconds=3)"),
        ("mobile.terminate(status='success')", "final_answer(answer='success')"),
        ("answer('42 apples')", "final_answer(answer='42 apples')"),
        # pixel coordinates are divided by the screenshot size
        ("pyautogui.click(x=540, y=1200)", "click(x=0.5, y=0.5)"),
        # prose around the code is kept, fences dropped
        (
            "Thought: save the file.\n```python\npyautogui.hotkey('ctrl', 's')\n```",
            "Thought: save the file.\npress(keys=['ctrl', 's'])",
        ),
    ],
)
def test_pyautogui_and_aguvis(raw, unified):
    assert normalize_action_text(raw, SCREEN) == unified
    assert normalize_action_text(unified, SCREEN) == unified  # idempotent


@pytest.mark.parametrize(
    ("raw", "unified"),
    [
        ('{"action_type": "click", "x": 540, "y": 1200}', "click(x=0.5, y=0.5)"),
        ('{"action_type": "long_press", "x": 108, "y": 240}', "long_press(x=0.1, y=0.1)"),
        ('{"action_type": "scroll", "direction": "down"}', "scroll(direction='down', amount=10)"),
        (
            '{"action_type": "swipe", "touch": [540, 1680], "lift": [540, 720]}',
            "swipe(from_coord=[0.5, 0.7], to_coord=[0.5, 0.3])",
        ),
        ('{"action_type": "type", "text": "pizza near me"}', "type(text='pizza near me')"),
        ('{"action_type": "input_text", "text": "x"}', "type(text='x')"),
        ('{"action_type": "open_app", "app_name": "Settings"}', "open_app(app_name='Settings')"),
        ('{"action_type": "navigate_home"}', "navigate_home()"),
        ('{"action_type": "navigate_back"}', "navigate_back()"),
        ('{"action_type": "wait"}', "wait(seconds=1)"),
        ('{"action_type": "status", "goal_status": "complete"}', "final_answer(answer='complete')"),
        ('{"action_type": "answer", "text": "It is 5 pm"}', "final_answer(answer='It is 5 pm')"),
        ('{"action_type": "press_enter"}', "press(keys='enter')"),
        ("{'action_type': 'click', 'x': 0.25, 'y': 0.75}", "click(x=0.25, y=0.75)"),
        # AITW dual_point: normalised [y, x]; a tap when touch and lift coincide
        (
            '{"action_type": "dual_point", "touch_point": [0.8, 0.5], "lift_point": [0.8, 0.5]}',
            "click(x=0.5, y=0.8)",
        ),
        (
            '{"action_type": "dual_point", "touch_point": [0.8, 0.5], "lift_point": [0.2, 0.5]}',
            "swipe(from_coord=[0.5, 0.8], to_coord=[0.5, 0.2])",
        ),
    ],
)
def test_android_json(raw, unified):
    assert normalize_action_text(raw, SCREEN) == unified


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "click somewhere near the top",
        "pyautogui.click(x=0.41, y=",
        "pyautogui.click(x=left, y=top)",
        "pyautogui.teleport(x=1)",
        "pyautogui.fly(to='Save')",
        "{{action: click}}",
        "__import__('os').system('echo pwned')",
        "pyautogui.click(x=__import__('os').getpid(), y=1)",
        '{"action_type": "click", "x": 540, "y":',
        '{"action_type": "teleport", "x": 3}',
        '{"action_type": "click", "x": "left", "y": "top"}',
        "{'action_type': 'click' 'x': 10}",
        '["click", 10, 20]',
        "tap the blue button please",
        "pyautogui.click(x=1300, y=100)",  # outside a 1080 px wide screenshot
        "pyautogui.scroll(direction='sideways')",
        "pyautogui.moveTo()",
    ],
)
def test_garbage_is_rejected(garbage):
    with pytest.raises(GuiActionError):
        normalize_action_text(garbage, SCREEN)


def test_pixel_coordinates_need_a_screenshot():
    with pytest.raises(GuiActionError, match="no screenshot"):
        normalize_action_text('{"action_type": "click", "x": 540, "y": 1200}', None)
    assert normalize_action_text("pyautogui.click(x=0.5, y=0.5)", None) == "click(x=0.5, y=0.5)"
