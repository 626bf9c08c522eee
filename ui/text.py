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
    "adapter": "Adapter",
    "refresh_adapters": "Refresh adapters",
    "pool": "Demonstration pool",
    "mode": "Mode",
    "k": "Demonstrations (k, few mode)",
    "selection": "Selection",
    "order": "Order",
    "tab_pools": "Pools",
    "upload_pool": "Pool file (JSONL, CSV/TSV with a header, or alpaca JSON)",
    "index_name": "Index name",
    "input_field": "Input field",
    "output_field": "Output field",
    "skip_bad": "Skip bad rows",
    "task_description": "Task description (optional)",
    "build_index": "Build index",
    "pools_available": "Available pools",
    "tab_compare": "Compare",
    "compare_models": "Base and adapters to compare (up to 5)",
    "compare_fewshot": "Add few-shot demonstrations to every prompt",
    "compare_run": "Compare",
    "seed": "Seed",
    "message": "Message",
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
    "adapter": "适配器",
    "refresh_adapters": "刷新适配器",
    "pool": "示例池",
    "mode": "模式",
    "k": "示例数（k，少样本模式）",
    "selection": "选择方式",
    "order": "排列顺序",
    "tab_pools": "示例池",
    "upload_pool": "示例池文件（JSONL、带表头的 CSV/TSV 或 alpaca JSON）",
    "index_name": "索引名称",
    "input_field": "输入字段",
    "output_field": "输出字段",
    "skip_bad": "跳过错误行",
    "task_description": "任务描述（可选）",
    "build_index": "构建索引",
    "pools_available": "可用的示例池",
    "tab_compare": "对比",
    "compare_models": "要对比的基座模型与适配器（最多 5 个）",
    "compare_fewshot": "在每个提示词中加入少样本示例",
    "compare_run": "对比",
    "seed": "随机种子",
    "message": "消息",
}

I18N = gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH, "zh-TW": ZH})


def t(key: str):
    """A translatable label; a key missing from either language is a bug, caught here."""
    if key not in EN or key not in ZH:
        raise KeyError(f"interface text '{key}' needs both an English and a Chinese entry")
    return I18N(key)
