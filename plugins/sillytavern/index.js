// NanoCommander for SillyTavern: an alpha slider for composite models (large + alpha * (tuned - base)).
// A third-party UI extension: it only listens to SillyTavern's own events and edits the request body
// they hand it, never SillyTavern's files. The pure functions are exported for tests.

export const MODULE = 'nanocommander';
export const DEFAULTS = Object.freeze({
    enabled: true,
    alpha: 1.0,
    member: 'composite',
    serverUrl: 'http://127.0.0.1:11434',
});
// API types whose request the extension edits: Text Completion's KoboldCpp, Ollama and Generic
// (textgen type names) and KoboldAI Classic (main API "kobold").
export const SUPPORTED_APIS = Object.freeze(['koboldcpp', 'kobold', 'ollama', 'generic']);
export const MEMBERS = Object.freeze(['composite', 'large', 'tuned', 'base']);

export function clampAlpha(value) {
    const x = Number(value);
    return Number.isFinite(x) ? Math.min(4, Math.max(0, x)) : DEFAULTS.alpha;
}

/** The extension's settings inside SillyTavern's extension_settings, created with defaults. */
export function loadSettings(extensionSettings) {
    const saved = extensionSettings[MODULE] ?? {};
    const settings = { ...DEFAULTS, ...saved };
    settings.alpha = clampAlpha(settings.alpha);
    if (!MEMBERS.includes(settings.member)) settings.member = 'composite';
    extensionSettings[MODULE] = settings;
    return settings;
}

/** SillyTavern's current API type: the Text Completion type, or the main API name. */
export function currentApiType(ctx) {
    if (ctx.mainApi === 'textgenerationwebui') return ctx.textCompletionSettings?.type ?? null;
    return ctx.mainApi ?? null;
}

/** Add alpha (and member, unless composite) to a generation request body; other APIs are left alone. */
export function applyAlpha(params, settings, apiType) {
    if (!params || !settings?.enabled || !SUPPORTED_APIS.includes(apiType)) return params;
    params.alpha = clampAlpha(settings.alpha);
    if (settings.member && settings.member !== 'composite') params.member = settings.member;
    else delete params.member;
    return params;
}

/** The model name to ask /api/show about, for the current API. */
export function currentModel(ctx, apiType) {
    if (apiType === 'ollama') return ctx.textCompletionSettings?.ollama_model || null;
    const status = ctx.onlineStatus;
    if (!status || ['no_connection', 'inactive'].includes(status)) return null;
    return String(status).replace(/^koboldcpp\//, '');
}

/** Readable lines for the composite object of an /api/show reply. */
export function describeMembers(show) {
    const composite = show?.composite;
    if (!composite) return 'Not a NanoCommander composite model.';
    const lines = [`recipe alpha: ${composite.alpha}`];
    for (const [role, info] of Object.entries(composite.members ?? {})) {
        const source = Object.values(info?.source ?? {}).find((v) => typeof v === 'string');
        const parts = [info?.name ?? source?.split(/[\\/]/).pop(), info?.architecture, info?.parameter_count && sizeLabel(info.parameter_count),
            info?.quantization].filter(Boolean);
        lines.push(`${role}: ${parts.join(', ') || '?'}`);
    }
    return lines.join('\n');
}

function sizeLabel(n) {
    if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
    return n >= 1e6 ? `${Math.round(n / 1e6)}M` : n >= 1e3 ? `${Math.round(n / 1e3)}K` : String(n);
}

export async function fetchShow(serverUrl, model, fetchFn = globalThis.fetch) {
    const response = await fetchFn(`${serverUrl.replace(/\/+$/, '')}/api/show`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model }),
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response.json();
}

/**
 * Wire the extension into SillyTavern. `ctx` is SillyTavern.getContext(); `deps` lets tests pass
 * `$` (jQuery), `fetch`, `loadHtml` and `getContext` (fresh context for each event).
 */
export async function init(ctx, deps = {}) {
    const $ = deps.$ ?? globalThis.jQuery;
    const fetchFn = deps.fetch ?? globalThis.fetch;
    const getContext = deps.getContext ?? (() => ctx);
    const types = ctx.eventTypes ?? ctx.event_types;
    const settings = loadSettings(ctx.extensionSettings);
    const save = () => getContext().saveSettingsDebounced?.();

    const onTextCompletion = (params) => {
        const live = getContext();
        applyAlpha(params, live.extensionSettings[MODULE], currentApiType(live));
    };
    const onGenerateData = (data) => {
        const live = getContext();
        if (live.mainApi === 'kobold') applyAlpha(data, live.extensionSettings[MODULE], 'kobold');
    };
    ctx.eventSource.on(types.TEXT_COMPLETION_SETTINGS_READY, onTextCompletion);
    ctx.eventSource.on(types.GENERATE_AFTER_DATA, onGenerateData);

    const refresh = async () => {
        if (!$) return;
        const live = getContext();
        const model = currentModel(live, currentApiType(live));
        if (!model) return $('#nanocommander_members').text('(no model connected)');
        try {
            const show = await fetchShow(live.extensionSettings[MODULE].serverUrl, model, fetchFn);
            $('#nanocommander_members').text(`${model}\n${describeMembers(show)}`);
        } catch (err) {
            $('#nanocommander_members').text(`${model}: cannot reach NanoCommander (${err.message})`);
        }
    };
    if (types.ONLINE_STATUS_CHANGED) ctx.eventSource.on(types.ONLINE_STATUS_CHANGED, refresh);

    if ($) {
        const loadHtml = deps.loadHtml ?? (async () => (await fetchFn(new URL('./settings.html', import.meta.url))).text());
        $('#extensions_settings2').append(await loadHtml());
        const showAlpha = () => $('#nanocommander_alpha_value').text(settings.alpha.toFixed(2));
        $('#nanocommander_enabled').prop('checked', settings.enabled).on('change', function () {
            settings.enabled = !!$(this).prop('checked');
            save();
        });
        $('#nanocommander_alpha').val(settings.alpha).on('input', function () {
            settings.alpha = clampAlpha($(this).val());
            showAlpha();
            save();
        });
        $('#nanocommander_member').val(settings.member).on('change', function () {
            settings.member = MEMBERS.includes($(this).val()) ? $(this).val() : 'composite';
            save();
        });
        $('#nanocommander_server').val(settings.serverUrl).on('change', function () {
            settings.serverUrl = String($(this).val()).trim() || DEFAULTS.serverUrl;
            save();
            refresh();
        });
        $('#nanocommander_refresh').on('click', refresh);
        $('#nanocommander_note').text('Reaches NanoCommander with KoboldCpp or Generic (Text Completion); '
            + 'see the README for Ollama and KoboldAI Classic.');
        showAlpha();
        await refresh();
    }
    return { settings, onTextCompletion, onGenerateData, refresh };
}

// In SillyTavern (a browser with the SillyTavern global and jQuery), start once the page is ready.
if (globalThis.SillyTavern?.getContext && globalThis.jQuery) {
    globalThis.jQuery(() => init(globalThis.SillyTavern.getContext(), {
        getContext: () => globalThis.SillyTavern.getContext(),
    }));
}
