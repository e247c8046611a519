# ruff: noqa: E501 - real chat templates keep their long lines
"""Chat templates for the template checks: real-world shapes that must pass, and injections.

The benign templates follow the ones shipped in the tokenizer configs of Llama 2, Llama 3.1
(tools), Mistral, Qwen 2.5 (tools), Qwen 3 (thinking), Gemma, ChatML/Zephyr, a macro-based tool
template and a transformers ``{% generation %}`` template.  The injections are assembled at test
time from pieces (``_d("class")`` is the dunder name), each named after its technique (the
CVE-2024-34359 family and the SSTI payloads of the public scanners' test suites); their commands
are inert.
"""

from __future__ import annotations

CMD = "echo onnxguard-test-payload"


def _d(name: str) -> str:
    """A dunder name, assembled so no payload string is stored whole."""
    return "_" * 2 + name + "_" * 2


LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

LLAMA31_TOOLS = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
            {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN25_TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN3_THINKING = """{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

ZEPHYR_CHATML = (
    "{% set system = messages | selectattr('role', 'equalto', 'system') | list %}"
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}{{ messages | map(attribute='content') | join(' ') | length > 0 }}"
)

MACRO_TOOLS = (
    "{%- macro render_args(args) -%}{%- for key, value in args | dictsort -%}"
    "{{ key }}={{ value | tojson }}{{ ', ' if not loop.last }}{%- endfor -%}{%- endmacro -%}"
    "{%- for message in messages -%}{%- if message.tool_calls is defined -%}"
    "{%- for call in message.tool_calls -%}"
    "{{ call.function.name }}({{ render_args(call.function.arguments) }})"
    "{%- endfor -%}{%- else -%}{{ message.role | upper }}: {{ message.content }}"
    "{%- endif %}\n{% endfor -%}"
)

GENERATION_TAG = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endif %}{% endfor %}"
)

BENIGN: dict[str, str] = {
    "llama2": LLAMA2,
    "mistral": MISTRAL,
    "llama3.1-tools": LLAMA31_TOOLS,
    "qwen2.5-tools": QWEN25_TOOLS,
    "qwen3-thinking": QWEN3_THINKING,
    "gemma": GEMMA,
    "zephyr-chatml": ZEPHYR_CHATML,
    "macro-tools": MACRO_TOOLS,
    "generation-tag": GENERATION_TAG,
}


def injections() -> dict[str, tuple[str, str]]:
    """technique -> (template, rule that must be reported)."""
    cls, base, subs, init, glb, bi = (
        _d("class"),
        _d("base"),
        _d("subclasses"),
        _d("init"),
        _d("globals"),
        _d("builtins"),
    )
    popen = f".popen('{CMD}').read()"
    return {
        "self-init-globals (CVE-2024-34359)": (
            f"{{{{ self.{init}.{glb}.{bi}.{_d('import')}('os'){popen} }}}}",
            "TPL001",
        ),
        "mro-subclasses": (f"{{{{ ''.{cls}.{_d('mro')}[1].{subs}() }}}}", "TPL001"),
        "subclasses-loop-catch-warnings": (
            f"{{% for c in [].{cls}.{base}.{subs}() %}}{{% if c.{_d('name')} == "
            f"'catch_warnings' %}}{{{{ c.{init}.{glb}['{bi}'].eval(\"1\") }}}}{{% endif %}}"
            "{% endfor %}",
            "TPL001",
        ),
        "subclasses-loop-popen": (
            f"{{% for x in ().{cls}.{base}.{subs}() %}}{{% if 'Popen' in x.{_d('name')} %}}"
            f"{{{{ x(['{CMD}']) }}}}{{% endif %}}{{% endfor %}}",
            "TPL001",
        ),
        "cycler-init-globals": (f"{{{{ cycler.{init}.{glb}.os{popen} }}}}", "TPL001"),
        "joiner-init-globals": (f"{{{{ joiner.{init}.{glb} }}}}", "TPL001"),
        "lipsum-globals": (f"{{{{ lipsum.{glb}['os']{popen} }}}}", "TPL001"),
        "attr-filter-chain": (
            f"{{{{ ()|attr('{cls}')|attr('{base}')|attr('{subs}')() }}}}",
            "TPL001",
        ),
        "attr-name-multiplied": ("{{ ()|attr('_'*2 ~ 'class' ~ '_'*2) }}", "TPL001"),
        "attr-name-from-set-vars": (
            "{% set a = '_' ~ '_cla' %}{% set b = 'ss_' ~ '_' %}{{ ()|attr(a ~ b) }}",
            "TPL001",
        ),
        "attr-name-printf-format": (
            "{{ ()|attr('%c%cclass%c%c'|format(95,95,95,95)) }}",
            "TPL001",
        ),
        "attr-name-join": ("{{ ()|attr(['_','_','class','_','_']|join) }}", "TPL001"),
        "attr-name-hex-escapes": ("{{ ()['\\x5f\\x5fclass\\x5f\\x5f'] }}", "TPL001"),
        "attr-name-reversed": ("{{ ()|attr('" + _d("ssalc") + "'|reverse) }}", "TPL001"),
        "attr-name-str-format": (
            "{{ ()|attr('{}{}class{}{}'.format('_','_','_','_')) }}",
            "TPL001",
        ),
        "attr-name-base64-filter": ("{{ ()|attr('X19jbGFzc19f'|b64decode) }}", "TPL001"),
        "subscript-built-key": ("{{ messages[('_' ~ '_cl' ~ 'ass_' ~ '_')] }}", "TPL001"),
        "request-application-globals": (f"{{{{ request.application.{glb} }}}}", "TPL001"),
        "config-object": ("{{ config.items() }}", "TPL001"),
        "url-for-globals": (f"{{{{ url_for.{glb}['os'] }}}}", "TPL001"),
        "format-string-attribute-walk": (
            "{{ '{0." + cls + "." + init + "." + glb + "}'.format(cycler) }}",
            "TPL001",
        ),
        "namespace-init": (f"{{{{ namespace.{init}.{glb} }}}}", "TPL001"),
        "builtins-name-eval": (f"{{{{ {bi}['eval']('1') }}}}", "TPL001"),
        "getattr-global-call": (f"{{{{ getattr(getattr('', '{cls}'), '{base}') }}}}", "TPL001"),
        "chr-construction-join": (
            "{{ ''.join([chr(95), chr(95), chr(99)]) }}",
            "TPL002",
        ),
        "module-attribute-catch-warnings": (
            "{% for c in messages %}{{ c()._module }}{% endfor %}",
            "TPL001",
        ),
        "include-file": ("{% include '/etc/passwd' %}", "TPL002"),
        "import-template": ("{% import 'helpers.j2' as h %}{{ h.x }}", "TPL002"),
        "unknown-callable-global": ("{{ shell('" + CMD + "') }}", "TPL002"),
        "unknown-method": ("{{ messages.pop() }}", "TPL002"),
    }
