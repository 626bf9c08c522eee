"""Interface text in English and Chinese.

Labels are `gr.I18n` keys: the browser's language picks the translation (zh-* gets Chinese,
everything else English). Strings the server builds at run time (errors) stay in English.
"""

import gradio as gr

EN = {
    "title": "## In-context learning & LoRA chat",
    "model": "Model",
    "tab_chat": "Chat",
    "chat": "Chat",
    "settings": "Settings",
    "system_prompt": "System prompt",
    "max_new_tokens": "Max new tokens",
    "temperature": "Temperature (0 = greedy)",
    "top_p": "Top-p",
    "prompt_details": "Prompt details",
    "demos_used": "Demonstrations used (prompt order)",
    "prompt_sent": "Exact prompt sent",
    "type_message": "Type a message...",
}

ZH = {
    "title": "## 上下文学习与 LoRA 对话",
    "model": "模型",
    "tab_chat": "对话",
    "chat": "对话",
    "settings": "设置",
    "system_prompt": "系统提示词",
    "max_new_tokens": "最大生成 token 数",
    "temperature": "温度（0 = 贪心解码）",
    "top_p": "Top-p",
    "prompt_details": "提示词详情",
    "demos_used": "使用的示例（按提示词顺序）",
    "prompt_sent": "实际发送的提示词",
    "type_message": "输入消息……",
}

I18N = gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH, "zh-TW": ZH})


def t(key: str):
    """A translatable label; a key missing from either language is a bug, caught here."""
    if key not in EN or key not in ZH:
        raise KeyError(f"interface text '{key}' needs both an English and a Chinese entry")
    return I18N(key)
